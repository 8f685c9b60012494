"""The CPU engine's dense decode attention (`paged_alibi_decode_dense`: all sequences of a decode step in
one padded SDPA) vs the per-sequence reference (`paged_alibi_attention_ref`), on ragged random pools."""
from __future__ import annotations

import random

import pytest
import torch

from editx.engine.paged_kv import PagedBatch, SequenceChunk
from editx.kernels import paged_alibi_attention as K
from editx.layers import kernel_backend
from editx.layers.attention import paged_alibi_attention
from editx.models.step1 import alibi_slopes

DIM = 64
# fp32: the same dot products summed in another order (one batched SDPA vs one per sequence): observed
# <= 1.4e-6 on outputs up to ~3; 1e-5 still catches any wrong key, bias or head-to-group mapping (those
# move outputs by ~0.1-1). bf16: outputs up to ~3 are rounded in steps of 1/64 (in [2, 4)); observed one
# step, allow two (a batched kernel may round its accumulation differently once more).
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2 / 64}


def decode_pool(heads, groups, block_size, lengths, dtype, seed):
    """A shuffled paged pool and one decode query per sequence (its last position = length - 1)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lengths]
    num_blocks = sum(need) + 2
    k = torch.randn(num_blocks, block_size, groups, DIM, generator=gen).to(dtype)
    v = torch.randn(num_blocks, block_size, groups, DIM, generator=gen).to(dtype)
    free = list(range(num_blocks))
    rng.shuffle(free)
    width = max(need) + 1  # padded rows, like PagedBatch
    tables = [[free.pop() for _ in range(n)] for n in need]
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    cu = torch.arange(len(lengths) + 1, dtype=torch.int32)
    positions = torch.tensor([n - 1 for n in lengths])
    q = (2 * torch.randn(len(lengths), heads, DIM, generator=gen)).to(dtype)
    return q, k, v, block_tables, seq_lens, cu, positions, alibi_slopes(heads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,groups,block_size", [(48, 4, 16), (6, 3, 5), (5, 5, 7)])
def test_dense_decode_equals_the_per_sequence_reference(dtype, heads, groups, block_size):
    lengths = [1, 2, 17, 300, 41, 16, 5, 123]  # ragged, block-aligned and not, one single-key sequence
    q, k, v, bt, sl, cu, pos, slopes = decode_pool(heads, groups, block_size, lengths, dtype, seed=heads + block_size)
    got = K.paged_alibi_decode_dense(q, k, v, bt, sl, pos, slopes)
    want = K.paged_alibi_attention_ref(q, k, v, bt, sl, cu, pos, slopes)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got.float() - want.float()).abs().max() <= ATOL[dtype]


def test_groups_of_sequences_give_the_same_result(monkeypatch):
    """Sequences are gathered in groups under DENSE_GROUP_BYTES: a budget of one sequence per group gives the
    same result (up to summation order: each group pads to its own longest sequence)."""
    args = decode_pool(8, 2, 16, [3, 250, 64, 9, 100], torch.float32, seed=3)
    q, k, v, bt, sl, cu, pos, slopes = args
    whole = K.paged_alibi_decode_dense(q, k, v, bt, sl, pos, slopes)
    monkeypatch.setattr(K, "DENSE_GROUP_BYTES", 1)
    one_by_one = K.paged_alibi_decode_dense(q, k, v, bt, sl, pos, slopes)
    want = K.paged_alibi_attention_ref(q, k, v, bt, sl, cu, pos, slopes)
    assert (one_by_one - whole).abs().max() <= ATOL[torch.float32] and (one_by_one - want).abs().max() <= ATOL[torch.float32]


def test_decode_only_detection():
    assert K.is_decode_only(torch.tensor([0, 1, 2, 3], dtype=torch.int32), 3)
    assert not K.is_decode_only(torch.tensor([0, 0, 3], dtype=torch.int32), 3)  # counts match, layout does not
    assert not K.is_decode_only(torch.tensor([0, 2, 3], dtype=torch.int32), 3)
    assert not K.is_decode_only(torch.tensor([0, 1, 2], dtype=torch.int32), 3)


def test_cpu_dispatch_takes_dense_for_decode_steps_only(monkeypatch):
    """Under "auto" the layer runs the dense path for an engine decode step and the reference for a step
    with a prefill chunk (both equal the reference); a forced "reference" backend runs the reference."""
    calls = []
    dense = K.paged_alibi_decode_dense
    monkeypatch.setattr(K, "paged_alibi_decode_dense", lambda *a: calls.append("dense") or dense(*a))
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(12, 16, 2, DIM, generator=gen), torch.randn(12, 16, 2, DIM, generator=gen)
    slopes = alibi_slopes(8)
    for chunks, expect in (([SequenceChunk([5], 20, [3, 7]), SequenceChunk([6], 3, [1])], ["dense"]),
                           ([SequenceChunk([5], 20, [3, 7]), SequenceChunk([6, 7, 8], 0, [1])], [])):
        calls.clear()
        batch = PagedBatch.build(chunks, 16, "cpu")
        q = torch.randn(batch.input_ids.shape[0], 8, DIM, generator=gen)
        with kernel_backend("auto"):
            got = paged_alibi_attention(q, k, v, batch, slopes)
        want = K.paged_alibi_attention_ref(q, k, v, batch.block_tables, batch.seq_lens, batch.cu_seqlens_q,
                                           batch.positions, slopes)
        assert calls == expect and (got - want).abs().max() <= ATOL[torch.float32]
        calls.clear()
        with kernel_backend("reference"):  # forced: the per-sequence reference itself, never the dense path
            paged_alibi_attention(q, k, v, batch, slopes)
        assert calls == []
