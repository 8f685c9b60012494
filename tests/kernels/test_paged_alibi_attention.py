"""Step1 sqrt-ALiBi GQA attention kernel (paged pool and static cache) vs the reference and fp64 truth."""
from __future__ import annotations

import random

import pytest
import torch

from editx.errors import InvalidInputError
from editx.kernels import paged_alibi_attention as K
from editx.layers import kernel_backend
from editx.layers.attention import cached_alibi_attention, paged_alibi_attention
from editx.models.step1 import alibi_bias_for_positions, alibi_slopes
from kernel_testing import DEVICE, DTYPES, big, check_error_budget, max_err, needs_kernels, randn

pytestmark = needs_kernels
DIM = 64
# (query heads, KV groups): the real model's 48/4 (12 heads per group) and a small GQA shape.
REAL, SMALL = (48, 4), (8, 2)
# fp32: summation order only (online softmax, per-tile dots): observed ~1e-6; 2e-5 catches any wrong key.
FP32_ATOL = 2e-5


class Pool:
    """A random paged pool and a ragged batch of (first new position, new tokens) per sequence."""

    def __init__(self, heads, groups, block_size, seqs, dtype, seed):
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        self.heads, self.groups = heads, groups
        need = [-(-(start + n) // block_size) for start, n in seqs]
        num_blocks = sum(need) + 3
        self.k = randn(num_blocks, block_size, groups, DIM, dtype=dtype, generator=gen)
        self.v = randn(num_blocks, block_size, groups, DIM, dtype=dtype, generator=gen)
        free = list(range(num_blocks))
        rng.shuffle(free)  # scattered, non-monotonic block ids
        width = max(need) + 1
        tables = [[free.pop() for _ in range(n)] for n in need]
        self.block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32,
                                         device=DEVICE)
        self.seq_lens = torch.tensor([s + n for s, n in seqs], dtype=torch.int32, device=DEVICE)
        cu = [0]
        for _, n in seqs:
            cu.append(cu[-1] + n)
        self.cu = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
        self.positions = torch.cat([torch.arange(s, s + n) for s, n in seqs]).to(DEVICE)
        self.q = randn(cu[-1], heads, DIM, dtype=dtype, generator=gen, scale=2.0)
        self.slopes = alibi_slopes(heads).to(DEVICE)

    def args(self):
        return (self.q, self.k, self.v, self.block_tables, self.seq_lens, self.cu, self.positions, self.slopes)

    def truth(self):
        q, k, v, bt, sl, cu, pos, slopes = self.args()
        return K.paged_alibi_attention_ref(q.double().cpu(), k.double().cpu(), v.double().cpu(), bt.cpu(), sl.cpu(),
                                           cu.cpu(), pos.cpu(), slopes.cpu())


def _check(got, pool: Pool, dtype, what):
    ref = K.paged_alibi_attention_ref(*pool.args())
    if dtype == torch.float32:
        assert max_err(got, ref) <= FP32_ATOL, what
    else:
        check_error_budget(got, ref, pool.truth(), what)


# ragged prefill chunks and decode tokens in one packed batch; contexts up to 300+
MIXED = [(0, 1), (0, 7), (5, 3), (100, 1), (0, 111), (big(250, 2000), big(61, 300))]


@pytest.mark.parametrize("block_size", [big(3, 5), 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_prefill_and_decode_batch_within_error_budget(dtype, block_size):
    pool = Pool(*SMALL, block_size, MIXED, dtype, seed=block_size)
    _check(K.paged_alibi_attention(*pool.args()), pool, dtype, f"mixed batch {dtype} block {block_size}")


@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_batch_real_gqa_with_key_splits(dtype, num_splits):
    """48 query heads over 4 KV groups; key splits merged by the second kernel (flash-decoding)."""
    seqs = [(n - 1, 1) for n in (1, 2, 17, 64, big(130, 4096))]
    pool = Pool(*REAL, 7, seqs, dtype, seed=11)
    got = K.paged_alibi_attention(*pool.args(), num_splits=num_splits, block_n=32)
    _check(got, pool, dtype, f"decode {dtype} splits {num_splits}")


def test_sequences_without_new_tokens_are_skipped():
    pool = Pool(*SMALL, 4, [(3, 2), (9, 0), (0, 5)], torch.float32, seed=2)
    _check(K.paged_alibi_attention(*pool.args()), pool, torch.float32, "empty sequence")


def test_layer_dispatch_takes_a_paged_batch():
    from editx.engine.paged_kv import PagedBatch, SequenceChunk

    pool = Pool(*SMALL, 5, [(0, 9), (20, 1)], torch.float32, seed=4)
    tables = [row[: -(-int(n) // 5)].tolist() for row, n in zip(pool.block_tables.cpu(), pool.seq_lens.cpu())]
    batch = PagedBatch.build([SequenceChunk([1] * 9, 0, tables[0]), SequenceChunk([1], 20, tables[1])], 5, DEVICE)
    with kernel_backend("triton", "alibi_attention"):
        got = paged_alibi_attention(pool.q, pool.k, pool.v, batch, pool.slopes)
    with kernel_backend("reference"):
        ref = paged_alibi_attention(pool.q, pool.k, pool.v, batch, pool.slopes)
    assert max_err(got, ref) <= FP32_ATOL


# -- static cache [B, G, S, D] (the CUDA-graphed decode path) ------------------------------------------
@pytest.mark.parametrize("steps", [1, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_static_cache_matches_step1_reference(dtype, steps):
    """Rows at different positions, a bucketed key_len beyond every position, stale slots after them."""
    heads, groups = REAL if steps == 1 else SMALL
    gen = torch.Generator().manual_seed(steps)
    batch, capacity = 3, big(160, 4096)
    starts = torch.tensor([0, 37, capacity - 30 - steps])
    positions = (starts[:, None] + torch.arange(steps)).to(DEVICE)
    key_len = capacity - 16
    k = randn(batch, groups, capacity, DIM, dtype=dtype, generator=gen)
    v = randn(batch, groups, capacity, DIM, dtype=dtype, generator=gen)
    q = randn(batch, steps, heads, DIM, dtype=dtype, generator=gen, scale=2.0)
    slopes = alibi_slopes(heads).to(DEVICE)
    bias = alibi_bias_for_positions(slopes, positions, key_len, dtype)
    ref = K.contiguous_alibi_attention_ref(q.transpose(1, 2), k, v, bias).transpose(1, 2)
    for splits in (1, None):
        got = K.contiguous_alibi_attention(q, k, v, positions, key_len, slopes, num_splits=splits)
        if dtype == torch.float32:
            assert max_err(got, ref) <= FP32_ATOL
        else:
            b64 = alibi_bias_for_positions(slopes.cpu(), positions.cpu(), key_len, torch.float64)
            truth = K.contiguous_alibi_attention_ref(q.double().cpu().transpose(1, 2), k.double().cpu(),
                                                     v.double().cpu(), b64).transpose(1, 2)
            check_error_budget(got, ref, truth, f"static {dtype} T={steps} splits={splits}")


def test_static_layer_dispatch_builds_the_bias_for_the_reference():
    gen = torch.Generator().manual_seed(8)
    q = randn(2, 3, 8, DIM, generator=gen)
    k, v = randn(2, 2, 20, DIM, generator=gen), randn(2, 2, 20, DIM, generator=gen)
    positions = torch.tensor([[4, 5, 6], [10, 11, 12]], device=DEVICE)
    slopes = alibi_slopes(8).to(DEVICE)
    with kernel_backend("triton", "alibi_attention"):
        got = cached_alibi_attention(q, k, v, positions, 16, slopes)
    ref = cached_alibi_attention(q, k, v, positions, 16, slopes, backend="reference")
    assert max_err(got, ref) <= FP32_ATOL


def test_bad_arguments_raise_clear_errors():
    pool = Pool(*SMALL, 4, [(0, 3)], torch.float32, seed=1)
    q, k, v, bt, sl, cu, pos, slopes = pool.args()
    with pytest.raises(InvalidInputError, match="head dim"):
        K.paged_alibi_attention(q[..., :48].contiguous(), k[..., :48].contiguous(), v[..., :48].contiguous(),
                                bt, sl, cu, pos, slopes)
    with pytest.raises(InvalidInputError, match="cu_seqlens_q"):
        K.paged_alibi_attention(q, k, v, bt, sl, cu[:1], pos, slopes)
    with pytest.raises(InvalidInputError, match="KV groups"):
        K.paged_alibi_attention(q[:, :7].contiguous(), k, v, bt, sl, cu, pos, slopes[:7])
    with pytest.raises(InvalidInputError, match="slopes"):
        K.paged_alibi_attention(q, k, v, bt, sl, cu, pos, slopes.double())
    with pytest.raises(InvalidInputError, match="k_cache"):
        K.paged_alibi_attention(q, k.half(), v, bt, sl, cu, pos, slopes)
    cache = torch.zeros(1, 2, 8, DIM, device=DEVICE)
    with pytest.raises(InvalidInputError, match="key_len"):
        K.contiguous_alibi_attention(q[None, :1], cache, cache, pos[None, :1], 9, slopes)
    with pytest.raises(InvalidInputError, match="positions"):
        K.contiguous_alibi_attention(q[None, :1], cache, cache, pos[:1], 4, slopes)
