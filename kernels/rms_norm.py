"""Step1 RMSNorm, optionally fused with the residual add before it (spec §4.2).

Math (upstream `Step1RMSNorm`): var = mean(x²) in fp32; y = x · rsqrt(var + eps) with the
rsqrt cast to x's dtype first, then · weight. With a residual, h = x + residual (rounded to
the activation dtype, as torch's add is) is what gets normalised, and h is returned too so
the block can add its next branch onto it. The kernel rounds at the same points as those
torch ops, so bf16/fp16 results differ from the reference only where fp32 sums taken in a
different order round differently (≤ 1 unit in the last place).
"""
from __future__ import annotations

import torch

from editx.errors import InvalidInputError

from ._triton import (HAS_TRITON, check_shape, check_tensor, check_unit_stride, is_interpreted, next_pow2,
                      require_launchable, rows_per_program, tl, triton)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., C], weight [C] → [..., C] (upstream's ops)."""
    var = x.float().pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(var + eps).to(x.dtype) * weight


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual; returns (rms_norm(h), h)."""
    h = x + residual
    return rms_norm_ref(h, weight, eps), h


if HAS_TRITON:

    @triton.jit
    def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, n_rows, n_cols, sx, sr, sy, sh, eps,
                         HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # ROWS rows per program, all columns of each: [ROWS, BLOCK] tiles
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        r64 = row.to(tl.int64)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        ok = (row < n_rows)[:, None] & (cols < n_cols)
        dtype = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + r64 * sx + cols, mask=ok, other=0.0).to(tl.float32)
        if HAS_RES:
            x = x + tl.load(r_ptr + r64 * sr + cols, mask=ok, other=0.0).to(tl.float32)
            x = x.to(dtype)  # h as torch's add returns it
            tl.store(h_ptr + r64 * sh + cols, x, mask=ok)
            x = x.to(tl.float32)
        var = tl.sum(x * x, axis=1) / n_cols
        scale = tl.rsqrt(var + eps).to(dtype).to(tl.float32)
        y = (x * scale[:, None]).to(dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        tl.store(y_ptr + r64 * sy + cols, (y * w).to(dtype), mask=ok)
else:  # pragma: no cover
    _rms_norm_kernel = None


def _rows(x: torch.Tensor, what: str) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    check_unit_stride(flat, what)
    return flat


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    require_launchable(_rms_norm_kernel, x.device, "rms_norm")
    check_tensor(x, "x", x.dim())
    if x.dim() < 1:
        raise InvalidInputError("x: expected at least one dim")
    cols = x.shape[-1]
    check_tensor(weight, "weight", 1, (x.dtype,), x.device)
    check_shape(weight, "weight", (cols,))
    check_unit_stride(weight, "weight")
    flat = _rows(x, "x")
    y = torch.empty_like(flat)
    h = res = None
    if residual is not None:
        check_tensor(residual, "residual", x.dim(), (x.dtype,), x.device)
        check_shape(residual, "residual", tuple(x.shape))
        res = _rows(residual, "residual")
        h = torch.empty_like(flat)
    if flat.shape[0]:
        block = next_pow2(cols)
        rows = rows_per_program(block, is_interpreted(_rms_norm_kernel))
        _rms_norm_kernel[(triton.cdiv(flat.shape[0], rows),)](
            flat, res if res is not None else flat, weight, y, h if h is not None else y, flat.shape[0], cols,
            flat.stride(0), res.stride(0) if res is not None else 0, y.stride(0), h.stride(0) if h is not None else 0,
            float(eps), HAS_RES=res is not None, ROWS=rows, BLOCK=block, num_warps=4 if block <= 4096 else 8,
        )
    shape = x.shape
    return y.view(shape), (h.view(shape) if h is not None else None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton RMSNorm: x [..., C] (C contiguous), weight [C] in x's dtype → [..., C]."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton residual add + RMSNorm in one pass: returns (rms_norm(x + residual), x + residual)."""
    return _launch(x, residual, weight, eps)
