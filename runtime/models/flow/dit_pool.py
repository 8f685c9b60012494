"""The DiT ODE solve over a slot pool (static shapes, no host syncs: CUDA-graph capturable).

`dit_slots.DiTSlots` owns the pool and the buffers; this is the math it runs: `cfm.solve_chunk` /
`DiT.forward_chunk` with each attention writing this call's keys/values into the pool rows first and
then attending over the whole rows through a key mask (see dit_slots.py for the layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from .cfm import CausalConditionalCFM, _euler
from .dit import DiT, DiTAttention


@dataclass
class SlotIO:
    """Index tensors of one solve: rows `[2B]` (pool row per batch row), write `[2B·W]` (flat pool
    frame per batch row and frame), mask `[2B, 1, 1, F]` (True = attend), n_valid `[2B]`."""

    rows: torch.Tensor
    write: torch.Tensor
    mask: torch.Tensor
    n_valid: torch.Tensor


def solve_on_pool(cfm: CausalConditionalCFM, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
                  x0: torch.Tensor, n_timesteps: int, pool_k: torch.Tensor, pool_v: torch.Tensor, io: SlotIO,
                  conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cfm.solve_chunk` with the caches in the pool: mu, cond, x0 `[B, 80, W]`, spks `[B, 80]`,
    pool_k/v `[n_steps, depth, rows, F, H, hd]`, conv `[n_steps, depth, 2B, 2, C, 2]` →
    (x `[B, 80, W]` float32, new conv caches `[n_steps, depth, 2B, 2, C, 2]`)."""
    batch = mu.shape[0]
    mu_in, spks_in, cond_in = cfm._cfg_inputs(mu, spks, cond)
    convs: list[torch.Tensor] = []

    def velocity(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        v, step_conv = _dit_on_pool(cfm.estimator, torch.cat([x, x], dim=0), mu_in, t.expand(2 * batch), spks_in,
                                    cond_in, pool_k[step], pool_v[step], io, conv[step])
        convs.append(step_conv)
        return cfm._guided(v, batch)

    x = _euler(x0.float(), n_timesteps, velocity)
    return x, torch.stack(convs)


def _dit_on_pool(dit: DiT, x, mu, t, spks, cond, k_step: torch.Tensor, v_step: torch.Tensor, io: SlotIO,
                 conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`DiT.forward_chunk` with attention over the pool rows (k_step/v_step `[depth, rows, F, H, hd]`)."""
    h, c = dit._inputs(x, mu, t, spks, cond)
    convs = []
    for i, block in enumerate(dit.blocks):
        attend = partial(_attention_on_pool, block.attn, k_step[i], v_step[i], io)
        h, block_conv = block.forward_with(h, c, attend, conv[i], io.n_valid)
        convs.append(block_conv)
    return dit.final_layer(h, c).transpose(1, 2), torch.stack(convs)


def _attention_on_pool(attn: DiTAttention, pool_k: torch.Tensor, pool_v: torch.Tensor, io: SlotIO,
                       y: torch.Tensor) -> torch.Tensor:
    """y `[2B, W, D]`: write this call's normalised keys and values into the pool rows
    (pool_k/v `[rows, F, H, hd]`), then attend over each batch row's pool row through its mask."""
    b, t, _ = y.shape
    h, d = attn.n_heads, attn.head_dim
    heads = (b, t, h, d)
    q = F.layer_norm(attn.to_q(y).view(heads), (d,), attn.q_norm.weight, attn.q_norm.bias, attn.q_norm.eps)
    k = F.layer_norm(attn.to_k(y).view(heads), (d,), attn.k_norm.weight, attn.k_norm.bias, attn.k_norm.eps)
    v = attn.to_v(y).view(heads)
    pool_k.view(-1, h * d).index_copy_(0, io.write, k.reshape(b * t, h * d))
    pool_v.view(-1, h * d).index_copy_(0, io.write, v.reshape(b * t, h * d))
    keys = pool_k.index_select(0, io.rows).transpose(1, 2)  # [2B, H, F, hd]
    values = pool_v.index_select(0, io.rows).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=io.mask)  # [2B, H, W, hd]
    return attn.proj(out.transpose(1, 2).reshape(b, t, h * d))

