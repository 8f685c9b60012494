"""dummy:full has every real dimension (spec §4.1, §8): checked on the meta device (no memory)."""
from __future__ import annotations

import pytest
import torch

from editx.loading.components import dummy_spec
from editx.models.flow import FlowModel
from editx.models.hift import HiFTGenerator
from editx.models.step1 import Step1Model
from editx.models.vq02 import SANMStreamingEncoder

FULL = dummy_spec("dummy:full")


def _count(module: torch.nn.Module) -> tuple[int, int]:
    sd = module.state_dict()
    return len(sd), sum(t.numel() for t in sd.values())


def _on_meta(factory):
    with torch.device("meta"):
        return factory()


def test_full_llm_matches_the_real_checkpoint():
    keys, params = _count(_on_meta(lambda: Step1Model(FULL.llm)))
    assert keys == 291                      # spec §8.2
    assert params == 3_529_706_496          # spec §4.1: 3.53 B parameters, 7.06 GB in bf16


def test_full_flow_matches_flow_pt():
    keys, params = _count(_on_meta(lambda: FlowModel(FULL.flow)))
    assert keys == 605                      # spec §8.3 / §11.1
    assert params == pytest.approx(153.75e6, rel=1e-3)


def test_full_hift_matches_hift_pt_after_weight_norm_folding():
    model = _on_meta(lambda: HiFTGenerator(FULL.hift))
    keys, params = _count(model)
    # hift.pt holds 328 tensors of which the weight-normed convs store (g, v) pairs; folded,
    # each pair is one weight: 328 - (number of weight-normed convs).
    assert params == pytest.approx(20.8e6, rel=0.01)   # spec §7 / §11.1
    assert keys < 328


def test_full_vq02_encoder_matches_paraformer():
    keys, _ = _count(_on_meta(lambda: SANMStreamingEncoder(FULL.vq02)))
    assert keys == 652                      # spec §8.5: 50 x 13 + 2


def test_tiny_preset_keeps_the_audio_vocabulary():
    assert dummy_spec("dummy:tiny").llm.vocab_size == FULL.llm.vocab_size == 74752
