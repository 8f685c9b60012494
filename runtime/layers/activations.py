"""Activation ops that dispatch between Triton kernels and their PyTorch references."""
from __future__ import annotations

import torch

from editx.kernels import swiglu as swiglu_kernels

from .backend import use_triton


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """gate, up [..., I] (the two MLP projections) → silu(gate)·up [..., I]."""
    unsupported = None if gate.dtype == up.dtype else f"gate {gate.dtype} / up {up.dtype} differ"
    if use_triton("swiglu", gate.device, backend, unsupported, swiglu_kernels._swiglu_kernel):
        return swiglu_kernels.swiglu(gate, up)
    return swiglu_kernels.swiglu_ref(gate, up)
