"""Front-end ONNX sessions (threads per provider) and dummy:full's real-shaped vq06 stand-in."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from editx.config import RuntimeConfig
from editx.errors import InvalidInputError
from editx.loading.dummy_onnx import campplus_standin
from editx.models.onnx_session import OnnxGraph, intra_op_threads
from editx.models.vq06 import Vq06Tokenizer

REAL_VQ06_BYTES = 523e6  # speech_tokenizer_v1.onnx (architecture spec, file table)


def test_threads_per_provider():
    assert intra_op_threads(["CUDAExecutionProvider", "CPUExecutionProvider"], None) == 1  # upstream's setting
    assert intra_op_threads(["CUDAExecutionProvider", "CPUExecutionProvider"], 6) == 1
    assert intra_op_threads(["CPUExecutionProvider"], None) == max(1, min(4, os.cpu_count() or 1))
    assert intra_op_threads(["CPUExecutionProvider"], 3) == 3


def test_session_uses_the_threads_it_is_given():
    graph = OnnxGraph(campplus_standin(0), ["CPUExecutionProvider"], "CAM++ (test)", threads=3)
    assert graph.session.get_session_options().intra_op_num_threads == 3
    assert graph.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_onnx_threads_is_validated(bad):
    with pytest.raises(InvalidInputError, match="onnx_threads"):
        RuntimeConfig(onnx_threads=bad)


@pytest.fixture(scope="module")
def full_vq06():
    from editx.loading.dummy_vq06_full import vq06_full_standin

    model = vq06_full_standin(0)
    return model, OnnxGraph(model, ["CPUExecutionProvider"], "vq06 (full stand-in)", threads=2)


def test_full_vq06_standin_has_the_real_graphs_size(full_vq06):
    model, _ = full_vq06
    assert abs(len(model) - REAL_VQ06_BYTES) / REAL_VQ06_BYTES < 0.01


@pytest.mark.parametrize("frames", [7, 401, 500])
def test_full_vq06_standin_has_the_real_signature(full_vq06, frames):
    _, graph = full_vq06
    assert len(graph.input_names) == 2
    feats = np.random.default_rng(frames).standard_normal((1, 128, frames), dtype=np.float32)
    codes = np.asarray(graph.run(feats, np.array([frames], np.int32))[0])
    # two stride-2 convs (padding 1): 100 Hz mel frames -> 25 Hz codes
    assert codes.shape == (1, math.ceil(math.ceil(frames / 2) / 2)) and codes.dtype == np.int64
    assert 0 <= codes.min() and codes.max() < 4096


def test_full_vq06_standin_passes_the_tokenizers_rate_check(full_vq06):
    _, graph = full_vq06
    wav = 0.1 * np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32)  # 3 s
    import torch

    codes = Vq06Tokenizer(graph)(torch.from_numpy(wav))
    assert abs(len(codes) - 75) <= 2


def test_full_vq06_standin_is_cached_on_disk(tmp_path, monkeypatch, full_vq06):
    from editx.loading import dummy_vq06_full

    model, _ = full_vq06
    built = []
    monkeypatch.setenv("EDITX_CACHE", str(tmp_path))
    monkeypatch.setattr(dummy_vq06_full, "vq06_full_standin", lambda seed: built.append(seed) or model)
    first = dummy_vq06_full.vq06_full_standin_file(0)
    second = dummy_vq06_full.vq06_full_standin_file(0)
    assert first == second and first.parent == tmp_path and built == [0]  # built once, then read
    assert first.read_bytes() == model and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setenv("EDITX_CACHE", str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a directory")
    assert dummy_vq06_full.vq06_full_standin_file(0) == model  # nowhere to write: the bytes themselves
