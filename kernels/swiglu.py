"""SwiGLU gate of Step1's MLP: silu(gate) · up in one pass (spec §4.2).

The MLP is down(silu(gate_proj(x)) · up_proj(x)); gate and up usually come from one fused [.., 2·I]
GEMM (`Step1MLP`) as its two halves, views with row stride 2·I, which the kernel reads in place
(rows are strided, only the last dim must be contiguous). It replaces the silu and the product,
which torch runs as two element-wise kernels with an [.., I] intermediate. Rounding as torch: silu
in fp32, rounded to the activation dtype, then the product rounded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import (HAS_TRITON, check_shape, check_tensor, check_unit_stride, is_interpreted, next_pow2,
                      require_launchable, rows_per_program, tl, triton)


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up [..., I] → silu(gate) · up."""
    return F.silu(gate) * up


if HAS_TRITON:

    @triton.jit
    def _swiglu_kernel(g_ptr, u_ptr, o_ptr, n_rows, n_cols, sg, su, so, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # [ROWS, BLOCK] tile of the [rows, I] activations
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        r64 = row.to(tl.int64)[:, None]
        cols = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
        ok = (row < n_rows)[:, None] & (cols < n_cols)
        dtype = g_ptr.dtype.element_ty
        g = tl.load(g_ptr + r64 * sg + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + r64 * su + cols, mask=ok, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        tl.store(o_ptr + r64 * so + cols, (act * u).to(dtype), mask=ok)
else:  # pragma: no cover
    _swiglu_kernel = None


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Triton silu(gate) · up: gate, up [..., I] (same dtype/device, I contiguous) → [..., I]."""
    require_launchable(_swiglu_kernel, gate.device, "swiglu")
    check_tensor(gate, "gate", gate.dim())
    check_tensor(up, "up", gate.dim(), (gate.dtype,), gate.device)
    check_shape(up, "up", tuple(gate.shape))
    g = gate.reshape(-1, gate.shape[-1])
    u = up.reshape(-1, up.shape[-1])
    check_unit_stride(g, "gate")
    check_unit_stride(u, "up")
    out = torch.empty(g.shape, dtype=gate.dtype, device=gate.device)
    if out.numel():
        interpreted = is_interpreted(_swiglu_kernel)
        block = min(next_pow2(g.shape[1]), 8192 if interpreted else 1024)
        rows = rows_per_program(block, interpreted)
        _swiglu_kernel[(triton.cdiv(g.shape[0], rows), triton.cdiv(g.shape[1], block))](
            g, u, out, g.shape[0], g.shape[1], g.stride(0), u.stride(0), out.stride(0), ROWS=rows, BLOCK=block,
            num_warps=4,
        )
    return out.view(gate.shape)
