"""Step1 attention over a paged KV cache with the sqrt-ALiBi bias (spec §4.2), reference path.

Layout (shared with the C++ scheduler's block manager, `editx._scheduler`):
    k_cache, v_cache: [num_blocks, block_size, G, D]   one layer's pool (G = KV groups)
    block_tables:     [S, max_blocks] int32            block ids of each sequence (row s), padded
    seq_lens:         [S] int32                        keys visible to the sequence's last query
    cu_seqlens_q:     [S + 1] int32                    packed query offsets: sequence s owns q[cu[s]:cu[s+1]]
    positions:        [N] int64                        absolute position of every packed query
    q:                [N, H, D]                        packed queries of all sequences (prefill chunks + decode)
    slopes:           [H] fp32                         ALiBi slopes; query head h reads KV group h // (H // G)
Query i of sequence s attends to key positions j ≤ positions[i] (j < seq_lens[s]) with the additive
bias −slope_h · sqrt(positions[i] − j); its own K/V were written into the cache before the call.
The key at absolute position j lives in block block_tables[s, j // block_size], row j % block_size.

`paged_alibi_attention_ref` is the plain-PyTorch path (gather the sequence's blocks, build the
bias, SDPA), mirroring upstream's numerics: bias computed in fp32 and cast to the query dtype,
softmax scale 1/sqrt(D). The Triton kernel beside it computes the same thing without the gather.

Triton kernel (`paged_alibi_attention`): one program per (query tile, KV group, key split).
A query tile is up to ROWS = BLOCK_Q·(H/G) rows: BLOCK_Q consecutive tokens of one sequence
times the H/G query heads sharing the group, so every key tile is loaded once for all of
them (GQA without repeating K/V). The bias −slope·sqrt(pos − j) is computed in the kernel
(fp32, rounded to the query dtype as upstream, added to the fp32 scores); keys after a
query's position are skipped or masked. Keys are gathered through the block table one row
at a time, so any block size works. Programs map to packed query tiles without a host sync
(binary search over cu_seqlens_q); for few programs (decode at small batch) the keys are
split over extra programs and a second kernel merges the partial softmaxes (flash-decoding).
`contiguous_alibi_attention` runs the same kernel over the static cache's [B, G, S, D]
layer (block size S, block table [[0], [1], ...]) for the CUDA-graphed decode path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from editx.errors import InvalidInputError

from ._triton import (HAS_TRITON, check_shape, check_tensor, check_unit_stride, is_interpreted, next_pow2, num_sms,
                      require_launchable, tl, triton)


def gather_sequence_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` positions of one sequence from a paged pool: [length, G, D]."""
    block_size = cache.shape[1]
    n_blocks = -(-length // block_size)
    blocks = cache[block_table[:n_blocks].long()]  # [n_blocks, block_size, G, D]
    return blocks.reshape(-1, *cache.shape[2:])[:length]


def sqrt_alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, key_len: int, dtype: torch.dtype) -> torch.Tensor:
    """[H, Tq, K] bias: −slope·sqrt(q − j) for j ≤ q, −inf after; fp32 math then cast (as upstream)."""
    keys = torch.arange(key_len, device=q_pos.device)
    dist = q_pos[:, None] - keys  # [Tq, K]
    bias = -torch.sqrt(dist.clamp(min=0).float())[None] * slopes.view(-1, 1, 1).float()
    return bias.masked_fill((dist < 0)[None], float("-inf")).to(dtype)


def paged_alibi_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    positions: torch.Tensor,
    slopes: torch.Tensor,
) -> torch.Tensor:
    """Reference paged sqrt-ALiBi GQA attention (see module doc). Returns [N, H, D] in q's dtype."""
    n_tokens, heads, dim = q.shape
    groups = k_cache.shape[2]
    per_group = heads // groups
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for s in range(len(lens)):
        lo, hi, length = cu[s], cu[s + 1], lens[s]
        if hi == lo:
            continue
        keys = gather_sequence_kv(k_cache, block_tables[s], length)    # [K, G, D]
        values = gather_sequence_kv(v_cache, block_tables[s], length)
        keys = keys.permute(1, 0, 2).repeat_interleave(per_group, 0)   # [H, K, D]
        values = values.permute(1, 0, 2).repeat_interleave(per_group, 0)
        bias = sqrt_alibi_bias(slopes, positions[lo:hi], length, q.dtype)  # [H, Tq, K]
        qs = q[lo:hi].transpose(0, 1)                                   # [H, Tq, D]
        o = F.scaled_dot_product_attention(qs[None], keys[None], values[None], attn_mask=bias[None],
                                           scale=1.0 / math.sqrt(dim))
        out[lo:hi] = o[0].transpose(0, 1)
    return out


DENSE_GROUP_BYTES = 64 * 2**20  # K+V gathered per group of sequences in the dense decode path


def is_decode_only(cu_seqlens_q: torch.Tensor, n_tokens: int) -> bool:
    """True when every sequence has exactly one query (an engine decode step): cu_seqlens_q = 0..S."""
    n_seqs = cu_seqlens_q.shape[0] - 1
    return n_seqs == n_tokens and bool(torch.equal(cu_seqlens_q.cpu(), torch.arange(n_seqs + 1, dtype=cu_seqlens_q.dtype)))


def paged_alibi_decode_dense(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                             seq_lens: torch.Tensor, positions: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """Decode steps (one query per sequence) without the per-sequence loop: q [S, H, D] -> [S, H, D].

    The reference loops over sequences (a gather, a bias, a K/V repeat and an SDPA call each: at 64
    streams ~85% of a CPU engine step, `paged_alibi_attention_ref`); here each group of sequences is
    gathered through its block tables into one padded [S', L, G, D] batch, the H/G heads sharing a group
    are folded into the query axis (no K/V repeat), keys past a sequence's length get -inf, and one SDPA
    runs the group. Same math and rounding as the reference (bias in fp32 cast to q's dtype, scale
    1/sqrt(D)); the padding adds only exact zeros to the softmax. Groups keep the gathered K+V under
    `DENSE_GROUP_BYTES` (64 MB: 64 sequences of 2,000 tokens in fp32 with the real 4 x 64 KV heads).
    Used where the Triton kernel does not run (CPU); on CUDA the kernel handles decode steps itself.
    """
    n_seqs, heads, dim = q.shape
    block_size, groups = k_cache.shape[1], k_cache.shape[2]
    per_seq = int(seq_lens.max()) * groups * dim * k_cache.element_size() * 2
    step = max(1, DENSE_GROUP_BYTES // max(per_seq, 1))
    return torch.cat([_decode_dense_group(q[i:i + step], k_cache, v_cache, block_tables[i:i + step],
                                          seq_lens[i:i + step], positions[i:i + step], slopes, block_size)
                      for i in range(0, n_seqs, step)])


def _decode_dense_group(q, k_cache, v_cache, block_tables, seq_lens, positions, slopes, block_size):
    # q [S, H, D]; k_cache/v_cache [num_blocks, block_size, G, D]; block_tables [S, MB]
    n_seqs, heads, dim = q.shape
    groups = k_cache.shape[2]
    length = int(seq_lens.max())
    n_blocks = -(-length // block_size)
    tables = block_tables[:, :n_blocks].long()                          # [S, nb] (padding = block 0, masked)
    keys = k_cache[tables].reshape(n_seqs, n_blocks * block_size, groups, dim)[:, :length]   # [S, L, G, D]
    values = v_cache[tables].reshape(n_seqs, n_blocks * block_size, groups, dim)[:, :length]
    j = torch.arange(length, device=q.device)
    dist = positions.view(-1, 1) - j                                    # [S, L]
    bias = -torch.sqrt(dist.clamp(min=0).float())[:, None] * slopes.view(1, -1, 1).float()  # [S, H, L]
    hidden = (dist < 0) | (j >= seq_lens.view(-1, 1).long())            # later keys, padding past the length
    bias = bias.masked_fill(hidden[:, None], float("-inf")).to(q.dtype)
    per_group = heads // groups
    out = F.scaled_dot_product_attention(
        q.view(n_seqs, groups, per_group, dim),                         # head h = g·hpg + r
        keys.permute(0, 2, 1, 3), values.permute(0, 2, 1, 3),           # [S, G, L, D]
        attn_mask=bias.view(n_seqs, groups, per_group, length), scale=1.0 / math.sqrt(dim))
    return out.reshape(n_seqs, heads, dim)


def contiguous_alibi_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                   bias: torch.Tensor) -> torch.Tensor:
    """Reference static-cache attention: q [B, H, T, D]; k_cache/v_cache [B, G, S, D] (one layer);
    bias [B, H, T, K] (K ≤ S slots read, from `Step1`'s `alibi_bias_for_positions`). Returns [B, H, T, D].

    GQA without repeating K/V: the heads of one group share its keys, so they are folded into
    the query axis ([B, H, T, D] -> [B, G, hpg·T, D], head h = g·hpg + r), each folded row with
    its own head's bias. Exact, and any SDPA backend that takes an additive mask can run it.
    """
    b, heads, t, d = q.shape
    groups = k_cache.shape[1]
    key_len = bias.shape[-1]
    keys, values = k_cache[:, :, :key_len], v_cache[:, :, :key_len]  # [B, G, K, D] views
    per_group = heads // groups
    q = q.reshape(b, groups, per_group * t, d)
    mask = bias.reshape(bias.shape[0], groups, per_group * t, key_len)
    attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return attn.reshape(b, heads, t, d)  # CUDA SDPA may return a non-contiguous layout


# =======================================================================================
# Triton kernels
# =======================================================================================
_LOG2E = 1.4426950408889634
_INT_DTYPES = (torch.int32, torch.int64)

if HAS_TRITON:

    @triton.jit
    def _alibi_attention_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, po_ptr, pm_ptr, pl_ptr,
        bt_ptr, seq_lens_ptr, cu_q_ptr, pos_ptr, slopes_ptr,
        num_seqs, block_size, split_keys, qk_scale,
        sq_n, sq_h, so_n, so_h, sk_blk, sk_row, sk_g, sv_blk, sv_row, sv_g, s_bt, sp_split, sp_n, sp_h,
        HPG: tl.constexpr, BLOCK_Q: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
        PAGED: tl.constexpr, SPLIT: tl.constexpr, UPCAST_DOT: tl.constexpr, PRECISION: tl.constexpr,
    ):
        tile = tl.program_id(0)
        g = tl.program_id(1)
        split = tl.program_id(2)
        dtype = q_ptr.dtype.element_ty

        # Sequence of this tile: the last s whose first tile index is <= tile. Sequence s owns
        # tiles from cu[s] // BLOCK_Q + s on (one spare tile per sequence covers ragged starts).
        left: tl.int32 = 0
        right = num_seqs
        while left < right:
            mid = (left + right) // 2
            first = tl.load(cu_q_ptr + mid)
            if BLOCK_Q > 1:
                first = first // BLOCK_Q + mid
            if first <= tile:
                left = mid + 1
            else:
                right = mid
        s = left - 1
        q_begin = tl.load(cu_q_ptr + s)
        q_end = tl.load(cu_q_ptr + s + 1)
        if BLOCK_Q > 1:
            t0 = q_begin + (tile - (q_begin // BLOCK_Q + s)) * BLOCK_Q
        else:
            t0 = tile
        if t0 < q_end:
            r = tl.arange(0, ROWS)
            tok = t0 + r // HPG
            head = g * HPG + r % HPG
            row_ok = (r < BLOCK_Q * HPG) & (tok < q_end)
            tok64 = tok.to(tl.int64)
            d = tl.arange(0, D)
            q = tl.load(q_ptr + tok64[:, None] * sq_n + head[:, None] * sq_h + d[None, :], mask=row_ok[:, None],
                        other=0.0)
            if UPCAST_DOT:
                q = q.to(tl.float32)
            pos = tl.load(pos_ptr + tok64, mask=row_ok, other=0).to(tl.int32)
            slope = tl.load(slopes_ptr + head, mask=row_ok, other=0.0).to(tl.float32)

            last_tok = tl.minimum(t0 + BLOCK_Q, q_end) - 1
            key_end = tl.minimum(tl.load(seq_lens_ptr + s).to(tl.int32),
                                 tl.load(pos_ptr + last_tok).to(tl.int32) + 1)
            lo = split * split_keys
            hi = tl.minimum(key_end, lo + split_keys)

            m_i = tl.full([ROWS], float("-inf"), tl.float32)
            l_i = tl.zeros([ROWS], tl.float32)
            acc = tl.zeros([ROWS, D], tl.float32)
            for j0 in range(lo, hi, BLOCK_N):
                j = j0 + tl.arange(0, BLOCK_N)
                key_ok = j < hi
                if PAGED:
                    blk = tl.load(bt_ptr + s.to(tl.int64) * s_bt + j // block_size, mask=key_ok, other=0)
                    blk = blk.to(tl.int64)
                    slot = (j % block_size).to(tl.int64)
                else:  # contiguous [B, G, S, D]: sequence s is "block" s
                    blk = s.to(tl.int64)
                    slot = j.to(tl.int64)
                k_off = blk * sk_blk + slot * sk_row + g * sk_g
                v_off = blk * sv_blk + slot * sv_row + g * sv_g
                k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=key_ok[:, None], other=0.0)
                v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=key_ok[:, None], other=0.0)
                if UPCAST_DOT:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 units
                dist = pos[:, None] - j[None, :]
                # upstream: bias in fp32 (IEEE sqrt, as torch), cast to the query dtype, added to the fp32 scores
                bias = -(slope[:, None] * tl.sqrt_rn(tl.maximum(dist, 0).to(tl.float32)))
                bias = bias.to(dtype).to(tl.float32) * 1.4426950408889634  # log2 units
                visible = key_ok[None, :] & (dist >= 0)
                scores = tl.where(visible, scores + bias, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(scores, axis=1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(scores - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, axis=1)
                p = p.to(dtype)
                if UPCAST_DOT:
                    p = p.to(tl.float32)
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
                m_i = m_new

            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            if SPLIT:
                at = split * sp_split + tok64 * sp_n + head * sp_h
                tl.store(po_ptr + at[:, None] * D + d[None, :], out, mask=row_ok[:, None])
                tl.store(pm_ptr + at, m_i, mask=row_ok)
                tl.store(pl_ptr + at, l_i, mask=row_ok)
            else:
                tl.store(o_ptr + tok64[:, None] * so_n + head[:, None] * so_h + d[None, :], out.to(dtype),
                         mask=row_ok[:, None])

    @triton.jit
    def _merge_splits_kernel(po_ptr, pm_ptr, pl_ptr, o_ptr, num_splits, sp_split, sp_n, sp_h, so_n, so_h,
                             NS: tl.constexpr, D: tl.constexpr):
        # One (token, head): o = Σ_s w_s·o_s / Σ_s w_s with w_s = l_s·2^(m_s − max m).
        n = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        sp = tl.arange(0, NS)
        ok = sp < num_splits
        at = sp * sp_split + n * sp_n + h * sp_h
        m = tl.load(pm_ptr + at, mask=ok, other=float("-inf"))
        l_s = tl.load(pl_ptr + at, mask=ok, other=0.0)
        m_max = tl.max(m, axis=0)
        m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.where(l_s > 0.0, l_s * tl.exp2(m - m_max), 0.0)
        d = tl.arange(0, D)
        o_s = tl.load(po_ptr + at[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        total = tl.sum(w, axis=0)
        o = tl.sum(w[:, None] * o_s, axis=0) / tl.where(total == 0.0, 1.0, total)
        tl.store(o_ptr + n * so_n + h * so_h + d, o.to(o_ptr.dtype.element_ty))
else:  # pragma: no cover
    _alibi_attention_kernel = _merge_splits_kernel = None


# =======================================================================================
# Launchers
# =======================================================================================
MIN_SPLIT_KEYS = 256  # below this many keys per program a split costs more than it gains


def plan_tiles(n_tokens: int, n_seqs: int, heads_per_group: int, decode_only: bool,
               prefill_rows: int = 64) -> tuple[int, int, int]:
    """(rows per tile, query tokens per tile, number of query tiles) for a packed batch (host ints only)."""
    if decode_only:  # one token per sequence: a tile is one token's heads
        rows = max(16, next_pow2(heads_per_group))
        return rows, 1, n_tokens
    rows = max(prefill_rows, next_pow2(heads_per_group))
    block_q = max(1, rows // heads_per_group)
    if block_q == 1:
        return rows, 1, n_tokens
    return rows, block_q, n_tokens // block_q + n_seqs


def plan_splits(programs: int, max_keys: int, block_n: int, device: torch.device,
                num_splits: int | None = None) -> tuple[int, int]:
    """(number of key splits, keys per split): split the keys when there are too few programs
    to fill the device (decode at small batch). Depends on shapes only (CUDA-graph stable)."""
    max_keys = max(1, int(max_keys))
    if num_splits is None and device.type != "cuda":
        num_splits = 1  # interpreter: more programs only cost time
    if num_splits is None:
        want = -(-2 * num_sms(device) // max(1, programs))
        num_splits = max(1, min(want, max_keys // MIN_SPLIT_KEYS))
    num_splits = max(1, min(int(num_splits), -(-max_keys // block_n)))
    split_keys = -(-max_keys // num_splits)
    split_keys = -(-split_keys // block_n) * block_n
    return -(-max_keys // split_keys), split_keys


def _launch(q, k, v, k_strides, v_strides, block_tables, block_size, seq_lens, cu_q, positions, slopes,
            n_seqs, max_keys, decode_only, paged, num_splits, block_n):
    n_tokens, heads, dim = q.shape
    groups = k_strides[3]
    hpg = heads // groups
    out = torch.empty(n_tokens, heads, dim, dtype=q.dtype, device=q.device)
    if n_tokens == 0:
        return out
    interpreted = is_interpreted(_alibi_attention_kernel)
    # the interpreter pays per program and per op, not per element: few big tiles there
    rows, block_q, tiles = plan_tiles(n_tokens, n_seqs, hpg, decode_only, 256 if interpreted else 64)
    block_n = block_n or (256 if interpreted else 64 if dim <= 64 else 32)
    splits, split_keys = plan_splits(tiles * groups, max_keys, block_n, q.device, num_splits)
    if splits > 1:
        part_o = torch.empty(splits, n_tokens, heads, dim, dtype=torch.float32, device=q.device)
        part_m = torch.empty(splits, n_tokens, heads, dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
    else:
        part_o = part_m = part_l = out
    _alibi_attention_kernel[(tiles, groups, splits)](
        q, k, v, out, part_o, part_m, part_l,
        block_tables, seq_lens, cu_q, positions, slopes,
        n_seqs, block_size, split_keys, _LOG2E / math.sqrt(dim),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_strides[0], k_strides[1], k_strides[2], v_strides[0], v_strides[1], v_strides[2],
        block_tables.stride(0) if paged else 0,
        n_tokens * heads, heads, 1,
        HPG=hpg, BLOCK_Q=block_q, ROWS=rows, BLOCK_N=block_n, D=dim, PAGED=paged, SPLIT=splits > 1,
        UPCAST_DOT=interpreted and q.dtype != torch.float32,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=2,
    )
    if splits > 1:
        _merge_splits_kernel[(n_tokens, heads)](
            part_o, part_m, part_l, out, splits, n_tokens * heads, heads, 1, out.stride(0), out.stride(1),
            NS=next_pow2(splits), D=dim,
        )
    return out


def _check_common(q, slopes, dim_ok_device):
    check_tensor(q, "q", 3)
    check_unit_stride(q, "q")
    n_tokens, heads, dim = q.shape
    if dim < 16 or dim != next_pow2(dim):
        raise InvalidInputError(f"q: head dim {dim} must be a power of two >= 16 for the Triton kernel")
    check_tensor(slopes, "slopes", 1, (torch.float32,), dim_ok_device)
    check_shape(slopes, "slopes", (heads,))
    return n_tokens, heads, dim


def _check_cache(k_cache, v_cache, q, layout: str, dim: int, heads: int) -> int:
    for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        check_tensor(t, name, 4, (q.dtype,), q.device)
        check_unit_stride(t, name)
    if v_cache.shape != k_cache.shape:
        raise InvalidInputError(f"v_cache: shape {tuple(v_cache.shape)} differs from k_cache {tuple(k_cache.shape)}")
    groups = k_cache.shape[2] if layout == "paged" else k_cache.shape[1]
    if k_cache.shape[3] != dim:
        raise InvalidInputError(f"k_cache: head dim {k_cache.shape[3]}, q has {dim}")
    if heads % groups:
        raise InvalidInputError(f"k_cache: {groups} KV groups do not divide the {heads} query heads")
    return groups


def paged_alibi_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                          seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, positions: torch.Tensor,
                          slopes: torch.Tensor, *, decode_only: bool | None = None, num_splits: int | None = None,
                          block_n: int | None = None) -> torch.Tensor:
    """Triton paged sqrt-ALiBi GQA attention: same arguments and result as `paged_alibi_attention_ref`.

    decode_only: every sequence has exactly one query (default: N == S, a host-known shape fact);
    num_splits: key splits per query tile (default: a heuristic from the shapes); block_n: keys
    per inner tile. No host sync and no data-dependent host control flow: CUDA-graph capturable.
    """
    require_launchable(_alibi_attention_kernel, q.device, "paged_alibi_attention")
    n_tokens, heads, dim = _check_common(q, slopes, q.device)
    groups = _check_cache(k_cache, v_cache, q, "paged", dim, heads)
    check_tensor(block_tables, "block_tables", 2, _INT_DTYPES, q.device)
    n_seqs = block_tables.shape[0]
    check_tensor(seq_lens, "seq_lens", 1, _INT_DTYPES, q.device)
    check_shape(seq_lens, "seq_lens", (n_seqs,))
    check_tensor(cu_seqlens_q, "cu_seqlens_q", 1, _INT_DTYPES, q.device)
    check_shape(cu_seqlens_q, "cu_seqlens_q", (n_seqs + 1,))
    check_tensor(positions, "positions", 1, _INT_DTYPES, q.device)
    check_shape(positions, "positions", (n_tokens,))
    if block_tables.shape[1] > 1 and block_tables.stride(1) != 1:
        block_tables = block_tables.contiguous()
    block_size = k_cache.shape[1]
    max_keys = block_tables.shape[1] * block_size
    strides = lambda t: (t.stride(0), t.stride(1), t.stride(2), groups)  # noqa: E731  (block, row, group)
    return _launch(q, k_cache, v_cache, strides(k_cache), strides(v_cache), block_tables, block_size, seq_lens,
                   cu_seqlens_q, positions, slopes, n_seqs, max_keys,
                   n_tokens == n_seqs if decode_only is None else decode_only, True, num_splits, block_n)


def contiguous_alibi_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               positions: torch.Tensor, key_len: int, slopes: torch.Tensor, *,
                               num_splits: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """Triton sqrt-ALiBi GQA attention over one layer of the static cache (the CUDA-graphed decode path).

    q [B, T, H, D] (D contiguous); k_cache/v_cache [B, G, S, D] with this step's K/V already written;
    positions [B, T] absolute positions of the queries (each < key_len ≤ S); key_len: host bound of
    the slots read (the decode bucket). Query (b, t) sees slots j ≤ positions[b, t].
    Returns [B, T, H, D] contiguous (`.view(B, T, H·D)` feeds o_proj without a copy).
    """
    require_launchable(_alibi_attention_kernel, q.device, "contiguous_alibi_attention")
    check_tensor(q, "q", 4)
    batch, steps, heads, dim = q.shape
    flat_q = q.reshape(batch * steps, heads, dim)
    _check_common(flat_q, slopes, q.device)
    groups = _check_cache(k_cache, v_cache, q, "contiguous", dim, heads)
    if k_cache.shape[0] != batch:
        raise InvalidInputError(f"k_cache: batch {k_cache.shape[0]}, q has {batch}")
    if not 0 < int(key_len) <= k_cache.shape[2]:
        raise InvalidInputError(f"key_len: expected 1..{k_cache.shape[2]} (cache capacity), got {key_len}")
    check_tensor(positions, "positions", 2, _INT_DTYPES, q.device)
    check_shape(positions, "positions", (batch, steps))
    flat_pos = positions.reshape(-1)
    seq_lens = positions[:, -1] + 1  # keys visible to each row's last query (device op, no sync)
    cu_q = torch.arange(0, (batch + 1) * steps, steps, dtype=torch.int32, device=q.device)
    strides = lambda t: (t.stride(0), t.stride(2), t.stride(1), groups)  # noqa: E731  (batch, slot, group)
    out = _launch(flat_q, k_cache, v_cache, strides(k_cache), strides(v_cache), cu_q, k_cache.shape[2], seq_lens,
                  cu_q, flat_pos, slopes, batch, int(key_len), steps == 1, False, num_splits, block_n)
    return out.view(batch, steps, heads, dim)
