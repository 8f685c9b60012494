"""Attention building blocks that dispatch between Triton kernels and their PyTorch references.

* `paged_alibi_attention`: Step1 over the paged KV pool (layout in `editx.kernels.paged_alibi_attention`).
* `cached_alibi_attention`: Step1 over one layer of the static cache [B, G, S, D] (engine path,
  CUDA-graphed decode). `alibi_uses_triton` tells the model beforehand whether the reference
  (which needs the materialised bias) or the kernel (which computes it) will run.
* `dit_attention`: the flow DiT's q/k-LayerNorm attention, offline or over a streaming cache.

Backends: see `editx.layers.backend` ("auto" = Triton on CUDA tensors, the reference otherwise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from editx.errors import InvalidInputError
from editx.kernels import dit_attention as dit_kernels
from editx.kernels import paged_alibi_attention as alibi_kernels

from .backend import get_kernel_backend, use_triton


# =======================================================================================
# Step1 (sqrt-ALiBi GQA)
# =======================================================================================
def _alibi_unsupported(head_dim: int) -> str | None:
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head dim {head_dim} is not a power of two >= 16"
    return None


def alibi_uses_triton(device: torch.device, head_dim: int, backend: str = "auto") -> bool:
    """Whether Step1's attention runs the Triton kernel for tensors on `device` (resolved once per forward)."""
    return use_triton("alibi_attention", device, backend, _alibi_unsupported(head_dim),
                      alibi_kernels._alibi_attention_kernel)


def paged_alibi_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch, slopes: torch.Tensor,
                          backend: str = "auto") -> torch.Tensor:
    """q [N, H, D] packed queries; k_cache/v_cache [num_blocks, block_size, G, D]; batch: a `PagedBatch`.

    Returns [N, H, D].
    """
    args = (q, k_cache, v_cache, batch.block_tables, batch.seq_lens, batch.cu_seqlens_q, batch.positions, slopes)
    if alibi_uses_triton(q.device, q.shape[-1], backend):
        return alibi_kernels.paged_alibi_attention(*args)
    if (q.device.type == "cpu" and get_kernel_backend("alibi_attention") == backend == "auto"
            and alibi_kernels.is_decode_only(batch.cu_seqlens_q, q.shape[0])):
        # one batched SDPA instead of a loop over sequences (the CPU engine's decode steps); a forced
        # "reference" still runs the per-sequence reference
        return alibi_kernels.paged_alibi_decode_dense(q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                                      batch.positions, slopes)
    return alibi_kernels.paged_alibi_attention_ref(*args)


def cached_alibi_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                           key_len: int, slopes: torch.Tensor, bias: torch.Tensor | None = None,
                           backend: str = "auto") -> torch.Tensor:
    """Step1 attention over the first `key_len` slots of one static-cache layer.

    q [B, T, H, D]; k_cache/v_cache [B, G, S, D] (this step's K/V already written); positions
    [B, T] absolute query positions (< key_len); slopes [H] fp32; bias: the reference's
    [B, H, T, key_len] sqrt-ALiBi bias in q's dtype, shared by all layers (built here when
    None and the reference runs). Returns [B, T, H, D].
    """
    if alibi_uses_triton(q.device, q.shape[-1], backend):
        return alibi_kernels.contiguous_alibi_attention(q, k_cache, v_cache, positions, key_len, slopes)
    if bias is None:
        bias = torch.stack([alibi_kernels.sqrt_alibi_bias(slopes, row, key_len, q.dtype) for row in positions])
    out = alibi_kernels.contiguous_alibi_attention_ref(q.transpose(1, 2), k_cache, v_cache, bias)
    return out.transpose(1, 2)


# =======================================================================================
# DiT
# =======================================================================================
def dit_kernel_slower(dtype: torch.dtype) -> bool:
    """Whether "auto" keeps DiT attention in `dtype` on SDPA although the kernel could run it: fp32,
    whose IEEE dots ran 14-30x slower than SDPA at T >= 300 on an H200
    (benchmarks/kernels/bench_dit_attention.py, 2026-11-27); bf16/fp16 ran 1.8-2x faster."""
    return dtype == torch.float32


def _dit_unsupported(q: torch.Tensor, mask: torch.Tensor | None) -> str | None:
    dim = q.shape[-1]
    if dim < 16 or dim & (dim - 1):
        return f"head dim {dim} is not a power of two >= 16"
    if mask is not None and (mask.dim() != 3 or mask.shape[1] != 1):
        return f"mask of shape {tuple(mask.shape)}: the kernel takes key-padding masks [B, 1, Tk] only"
    return None


def _check_dit_mask(mask: torch.Tensor | None, batch: int, steps: int, cached: int) -> None:
    """Both backends read mask [B, 1|T, Tk] over all Tk = T + Tc keys ([new | cache]): say so
    here rather than fail inside SDPA or the launcher with another backend's wording."""
    if mask is None:
        return
    if (mask.dim() != 3 or mask.shape[0] != batch or mask.shape[1] not in (1, steps)
            or mask.shape[2] != steps + cached):
        raise InvalidInputError(f"mask: expected shape [{batch}, 1 or {steps}, {steps + cached}] "
                                f"(batch, queries, new + cached keys), got {list(mask.shape)}")


def dit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm: tuple, k_norm: tuple,
                  mask: torch.Tensor | None = None, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DiT attention with per-head q/k LayerNorm.

    q, k, v [B, T, H, D] raw projections (views of the Linear outputs); q_norm/k_norm =
    (weight [D], bias [D], eps); mask [B, 1|T, T+Tc] bool (True = attend) over the keys in the
    order [this call's frames | cached frames], or None; cache (k, v) [B, H, Tc, D] (normalised
    keys of earlier chunks) or None. Key-padding masks [B, 1, T+Tc] (offline ragged batches,
    ragged streaming chunk batches) run the kernel; query-dependent masks [B, T, T+Tc] the reference.
    Returns (out [B, T, H·D], keys, values [B, H, T+Tc, D] with this call's frames first).
    """
    b, t, h, d = q.shape
    _check_dit_mask(mask, b, t, 0 if cache is None else cache[0].shape[2])
    if use_triton("dit_attention", q.device, backend, _dit_unsupported(q, mask),
                  dit_kernels._dit_attention_kernel, slower=dit_kernel_slower(q.dtype)):
        key_mask = None if mask is None else mask[:, 0, :]  # [B, T+Tc]
        if cache is None:
            keys = torch.empty(b, h, t, d, dtype=q.dtype, device=q.device)
            out = dit_kernels.dit_attention(q, k, v, q_norm, k_norm, key_mask, k_out=keys)
            return out.view(b, t, h * d), keys, v.transpose(1, 2)
        keys = torch.empty(b, h, t + cache[0].shape[2], d, dtype=q.dtype, device=q.device)
        keys[:, :, t:].copy_(cache[0])
        out = dit_kernels.dit_attention(q, k, v, q_norm, k_norm, key_mask, cache[0], cache[1],
                                        k_out=keys[:, :, :t])
        return out.view(b, t, h * d), keys, torch.cat([v.transpose(1, 2), cache[1]], dim=2)
    # Reference: upstream's ops (LayerNorm per head, keys prepended to the cache, SDPA).
    qh = F.layer_norm(q.transpose(1, 2), (d,), *q_norm)
    kh = F.layer_norm(k.transpose(1, 2), (d,), *k_norm)
    vh = v.transpose(1, 2)
    if cache is not None:
        kh = torch.cat([kh, cache[0]], dim=2)
        vh = torch.cat([vh, cache[1]], dim=2)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=None if mask is None else mask.unsqueeze(1))
    return out.transpose(1, 2).reshape(b, t, h * d), kh, vh
