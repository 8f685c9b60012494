"""The steps the runtime records as CUDA graphs, with the Triton kernels they run on a GPU, checked for
capture hazards (`graph_hazards`) on whatever device the kernel suite runs: the paged decode step of
the streaming engine (one bucket, padding rows, the audio-only LM head), the static-cache decode step
of offline generation, and the DiT slot pool's solve. Under the interpreter a kernel's own body is
not examined (on a GPU it is one launch); its Python wrapper is."""
from __future__ import annotations

import pytest
import torch

from decoder_testing import loaded_pool_solve, tiny_flow
from kernel_testing import DEVICE, needs_kernels

from editx.engine.model_runner import GraphedDecoder, PagedDecodeGraphs
from editx.engine.paged_kv import PagedKVCache, SequenceChunk
from editx.layers import kernel_backend
from editx.layers.backend import OPS
from editx.loading.random_init import randomize_
from editx.models.graph_safety import graph_hazards
from editx.models.step1 import Step1Config, build_step1

pytestmark = needs_kernels
# head dim 16 (96 / 6): the smallest the ALiBi kernel takes; 3 KV groups, odd MLP width and vocabulary
CFG = Step1Config(hidden_size=96, intermediate_size=136, num_hidden_layers=2, num_attention_heads=6,
                  num_attention_groups=3, vocab_size=301)
BLOCK = 5
SCRATCH = 11


@pytest.fixture(scope="module")
def model():
    return randomize_(build_step1(CFG, DEVICE, torch.float32), seed=5, depth=2)


def paged_step(model):
    """A 3-sequence decode step in bucket 4 (one padding row on the scratch block) with the audio-only
    head ranges; returns step() as `PagedDecodeGraphs` captures it."""
    cache = PagedKVCache.for_model(model, SCRATCH + 1, BLOCK)
    graphs = PagedDecodeGraphs(model, cache, 4, SCRATCH, 8, "static", "auto", buckets=(1, 4),
                               vocab_ranges=[(3, 4), (151, 260)])
    chunks = [SequenceChunk([7], 9, [0, 1]), SequenceChunk([9], 2, [2]), SequenceChunk([300], 13, [3, 4, 5])]
    static = graphs._make_static(4)
    static.load(chunks, BLOCK, SCRATCH)
    return lambda: model.forward_paged(static.batch, cache, "auto", graphs.vocab_ranges)


@pytest.mark.parametrize("scope", [None, "alibi_attention"], ids=["all_kernels", "attention_kernel_only"])
def test_paged_decode_step_is_capturable(model, scope):
    """What the engine captures per batch bucket on CUDA. With every op on its kernel (the GPU's "auto") or
    only the attention (the others on their references, as under a forced "reference" of those ops)."""
    with torch.inference_mode(), kernel_backend("triton", scope):
        hazards = graph_hazards(paged_step(model))
    assert hazards == [], "\n".join(map(str, hazards))


def test_paged_reference_attention_is_not_capturable(model):
    """Why the engine records decode graphs only where the Triton attention runs: the reference reads
    each sequence's length on the host. (Also proves the check sees through the model's layers.)"""
    with torch.inference_mode(), kernel_backend("reference", "alibi_attention"):
        hazards = graph_hazards(paged_step(model))
    assert hazards and all(h.where.startswith("paged_alibi_attention.py") for h in hazards)


def test_static_cache_decode_step_is_capturable(model):
    """`GraphedDecoder`'s step (offline generation): one token per row over its own KV cache."""
    runner = GraphedDecoder(model, batch=2, capacity=40, use_graphs=False)
    with torch.inference_mode(), kernel_backend("triton"):
        runner.step(torch.tensor([[4], [8]], device=DEVICE), runner.cache, torch.tensor([0, 0], device=DEVICE), 1)
        runner._ids.copy_(torch.tensor([[5], [9]]))
        runner._pos.fill_(1)
        hazards = graph_hazards(lambda: model(runner._ids, runner.cache, runner._pos, attend_len=24))
    assert hazards == [], "\n".join(map(str, hazards))


@pytest.mark.parametrize("op", [op for op in OPS if op in ("adaln", "dit_attention", "rms_norm")])
def test_dit_slot_pool_solve_with_kernels_is_capturable(op):
    """The DiT slot pool's chunk solve (padded batch bucket, odd width) with the op's kernel forced."""
    flow = tiny_flow().to(DEVICE)
    with torch.inference_mode(), kernel_backend("triton", op):
        _, step = loaded_pool_solve(flow, True, 3, 47, device=DEVICE)
        hazards = graph_hazards(step)
    assert hazards == [], "\n".join(map(str, hazards))
