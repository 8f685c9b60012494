"""Normalisation ops that dispatch between Triton kernels and their PyTorch references.

* `rms_norm` / `add_rms_norm`: Step1's RMSNorm (fp32 variance, rsqrt cast to the activation
  dtype), the second fused with the residual add before it.
* `adaln_modulate`: the DiT's non-affine LayerNorm + `·(1 + scale) + shift`, optionally after
  the gated residual `x + gate·branch`.

Backends: see `editx.layers.backend` ("auto" = Triton on CUDA tensors, the reference otherwise).
"""
from __future__ import annotations

import torch

from editx.kernels import adaln_modulate as adaln_kernels
from editx.kernels import rms_norm as rms_kernels

from .backend import use_triton


def _same_dtype(*tensors: torch.Tensor) -> str | None:
    dtypes = {t.dtype for t in tensors if t is not None}
    return None if len(dtypes) == 1 else f"mixed dtypes {sorted(str(d) for d in dtypes)}"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """x [..., C], weight [C] → RMSNorm(x) [..., C]."""
    if use_triton("rms_norm", x.device, backend, _same_dtype(x, weight), rms_kernels._rms_norm_kernel):
        return rms_kernels.rms_norm(x, weight, eps)
    return rms_kernels.rms_norm_ref(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual (both [..., C]); returns (RMSNorm(h), h)."""
    if use_triton("rms_norm", x.device, backend, _same_dtype(x, residual, weight), rms_kernels._rms_norm_kernel):
        return rms_kernels.add_rms_norm(x, residual, weight, eps)
    return rms_kernels.add_rms_norm_ref(x, residual, weight, eps)


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                   residual: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, C]; shift/scale/gate [B, 1, C]; residual [B, T, C] or None.

    Returns (y, x') with x' = x + gate·residual (x without a residual) and
    y = LayerNorm(x', no affine, eps)·(1 + scale) + shift.
    """
    unsupported = _same_dtype(x, shift, scale, residual, gate)
    if unsupported is None and (x.dim() != 3 or shift.dim() != 3 or shift.shape[1] != 1):
        unsupported = f"x {tuple(x.shape)} / shift {tuple(shift.shape)}: the kernel takes [B, T, C] and [B, 1, C]"
    if use_triton("adaln", x.device, backend, unsupported, adaln_kernels._adaln_kernel):
        return adaln_kernels.adaln_modulate(x, shift, scale, eps, residual, gate)
    return adaln_kernels.adaln_modulate_ref(x, shift, scale, eps, residual, gate)
