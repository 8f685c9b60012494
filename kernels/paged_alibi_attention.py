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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
