"""Activation ops that dispatch between Triton kernels and their PyTorch references."""
from __future__ import annotations

import torch

from editx.kernels import snake as snake_kernels
from editx.kernels import swiglu as swiglu_kernels

from .backend import use_triton


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """gate, up [..., I] (the two MLP projections) → silu(gate)·up [..., I]."""
    unsupported = None if gate.dtype == up.dtype else f"gate {gate.dtype} / up {up.dtype} differ"
    if use_triton("swiglu", gate.device, backend, unsupported, swiglu_kernels._swiglu_kernel):
        return swiglu_kernels.swiglu(gate, up)
    return swiglu_kernels.swiglu_ref(gate, up)


def snake(x: torch.Tensor, alpha: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """HiFT's Snake: x [B, C, T], alpha [C] → x + sin²(α·x)/(α + 1e-9) [B, C, T]."""
    unsupported = None
    if alpha.dtype != x.dtype:
        unsupported = f"x {x.dtype} / alpha {alpha.dtype} differ"
    elif x.dim() != 3 or not x.is_contiguous():
        unsupported = "x is not a contiguous [B, C, T] tensor"
    if use_triton("snake", x.device, backend, unsupported, snake_kernels._snake_kernel):
        return snake_kernels.snake(x, alpha)
    return snake_kernels.snake_ref(x, alpha)
