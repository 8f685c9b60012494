"""Snake activation of the HiFT vocoder, y = x + sin²(α·x) / (α + 1e-9) per channel, in one pass.

HiFT runs 72 Snakes per call (3 upsampling stages x 3 ResBlocks x 3 dilations x 2, plus the source
ResBlocks), each ~7 element-wise torch ops (cast, add, reciprocal, cast, mul, sin, pow, mul, add):
~500 of the ~950 ops a streamed HiFT chunk dispatches (counted on CPU, see
benchmarks/kernels/bench_snake.py), and 7 passes over activations of up to 64 channels x 46,080
samples per stream at the last stage. The kernel reads x once and writes y once.

Rounding: the reference rounds after every op in the activation dtype; the kernel computes in fp32
and rounds once (closer to the exact value in bf16/fp16; the same up to the sin implementations'
last-ulp differences in fp32).
"""
from __future__ import annotations

import torch

from editx.errors import InvalidInputError

from ._triton import HAS_TRITON, check_shape, check_tensor, is_interpreted, next_pow2, require_launchable, tl, triton

SNAKE_EPS = 1e-9  # upstream's: keeps α = 0 finite; vanishes next to α in fp16/bf16, hence the fp32 reciprocal


def snake_ref(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x [B, C, T], alpha [C] (linear scale) → x + sin²(α·x)/(α + 1e-9), upstream's op order."""
    a = alpha.view(1, -1, 1)
    inv_alpha = (1.0 / (a.float() + SNAKE_EPS)).to(x.dtype)  # the reciprocal in fp32, cast once
    return x + inv_alpha * torch.sin(x * a).pow(2)


if HAS_TRITON:

    @triton.jit
    def _snake_kernel(x_ptr, a_ptr, y_ptr, n_rows, n_cols, channels, EPS: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK: tl.constexpr):
        # [ROWS, BLOCK] tile of x viewed as [B·C, T]; row r is channel r % C
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
        ok_row = row < n_rows
        ok = ok_row[:, None] & (cols < n_cols)
        offs = row.to(tl.int64)[:, None] * n_cols + cols
        a = tl.load(a_ptr + row % channels, mask=ok_row, other=1.0).to(tl.float32)[:, None]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        s = tl.sin(x * a)
        y = x + s * s * (1.0 / (a + EPS))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)
else:  # pragma: no cover
    _snake_kernel = None


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Triton Snake: x [B, C, T] contiguous, alpha [C] of x's dtype and device → y [B, C, T]."""
    require_launchable(_snake_kernel, x.device, "snake")
    check_tensor(x, "x", 3)
    check_tensor(alpha, "alpha", 1, (x.dtype,), x.device)
    check_shape(alpha, "alpha", (x.shape[1],))
    if not x.is_contiguous():
        raise InvalidInputError(f"x: expected a contiguous [B, C, T] tensor, got strides {x.stride()}")
    y = torch.empty_like(x)
    rows, cols = x.shape[0] * x.shape[1], x.shape[2]
    if y.numel():
        block = min(next_pow2(cols), 1024)
        # Short rows (early stages: T = mel frames x 8) get several rows per program; 4096 elements per tile.
        per = max(1, min(64, 4096 // block)) if not is_interpreted(_snake_kernel) else max(1, min(16, 1024 // block))
        _snake_kernel[(triton.cdiv(rows, per), triton.cdiv(cols, block))](
            x, alpha, y, rows, cols, x.shape[1], EPS=SNAKE_EPS, ROWS=per, BLOCK=block, num_warps=4)
    return y
