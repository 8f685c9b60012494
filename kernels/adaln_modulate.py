"""DiT adaLN: LayerNorm (no affine) + modulate `y·(1 + scale) + shift`, optionally after the gated residual.

Every DiT block (spec §5.6) runs three times
    x = x + gate·branch                          (residual of the previous branch)
    y = LN(x)·(1 + scale) + shift                (input of the next branch)
with shift/scale/gate per batch row ([B, 1, C], from the timestep embedding) broadcast over
time. Torch runs that as ~6 element-wise kernels and two reductions; this kernel does it in
one read of x (and of the branch, any strides: the conv branch arrives as a transposed view)
and one write of y (and of the new x).
Rounding: fp32 inside, one rounding per output. The torch reference rounds after every op,
so bf16/fp16 outputs may differ from it by a few units in the last place; fp32 agrees to
reduction order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from editx.errors import InvalidInputError

from ._triton import (HAS_TRITON, check_tensor, check_unit_stride, is_interpreted, next_pow2, require_launchable,
                      rows_per_program, tl, triton)


def adaln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None,
                       gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, C]; shift/scale/gate [B, 1, C]; residual [B, T, C] or None.

    Returns (y, x') with x' = x + gate·residual (x itself without a residual) and
    y = layer_norm(x', eps)·(1 + scale) + shift.
    """
    if residual is not None:
        x = x + gate * residual
    y = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return y * (1 + scale) + shift, x


if HAS_TRITON:

    @triton.jit
    def _adaln_kernel(x_ptr, r_ptr, g_ptr, shift_ptr, scale_ptr, y_ptr, xo_ptr, n_rows, T, C,
                      sx_b, sx_t, sr_b, sr_t, sr_c, sg_b, ssh_b, ssc_b, sy_b, sy_t, sxo_b, sxo_t, eps,
                      HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # ROWS (b, t) rows per program, all C channels of each: [ROWS, BLOCK] tiles
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        b = (row // T).to(tl.int64)[:, None]
        t = (row % T).to(tl.int64)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        ok = (row < n_rows)[:, None] & (cols < C)
        dtype = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + b * sx_b + t * sx_t + cols, mask=ok, other=0.0).to(tl.float32)
        if HAS_RES:
            gate = tl.load(g_ptr + b * sg_b + cols, mask=ok, other=0.0).to(tl.float32)
            branch = tl.load(r_ptr + b * sr_b + t * sr_t + cols * sr_c, mask=ok, other=0.0).to(tl.float32)
            x = (x + gate * branch).to(dtype)
            tl.store(xo_ptr + b * sxo_b + t * sxo_t + cols, x, mask=ok)
            x = x.to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(ok, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        y = xc * tl.rsqrt(var + eps)[:, None]
        shift = tl.load(shift_ptr + b * ssh_b + cols, mask=ok, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + b * ssc_b + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + b * sy_b + t * sy_t + cols, (y * (1.0 + scale) + shift).to(dtype), mask=ok)
else:  # pragma: no cover
    _adaln_kernel = None


def _check_mod(t: torch.Tensor, what: str, x: torch.Tensor) -> None:
    check_tensor(t, what, 3, (x.dtype,), x.device)
    if t.shape[0] != x.shape[0] or t.shape[1] != 1 or t.shape[2] != x.shape[2]:
        raise InvalidInputError(f"{what}: expected shape [{x.shape[0]}, 1, {x.shape[2]}], got {tuple(t.shape)}")
    check_unit_stride(t, what)


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                   residual: torch.Tensor | None = None,
                   gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `adaln_modulate_ref` (same arguments, same results up to rounding)."""
    require_launchable(_adaln_kernel, x.device, "adaln_modulate")
    check_tensor(x, "x", 3)
    check_unit_stride(x, "x")
    batch, steps, chans = x.shape
    _check_mod(shift, "shift", x)
    _check_mod(scale, "scale", x)
    if (residual is None) != (gate is None):
        raise InvalidInputError("residual/gate: pass both or neither")
    if residual is not None:
        check_tensor(residual, "residual", 3, (x.dtype,), x.device)
        if tuple(residual.shape) != tuple(x.shape):
            raise InvalidInputError(f"residual: expected shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        _check_mod(gate, "gate", x)
    y = torch.empty(batch, steps, chans, dtype=x.dtype, device=x.device)
    x_out = torch.empty_like(y) if residual is not None else x
    if y.numel():
        r = residual if residual is not None else x
        g = gate if gate is not None else shift
        block = next_pow2(chans)
        rows = rows_per_program(block, is_interpreted(_adaln_kernel))
        n_rows = batch * steps
        _adaln_kernel[(triton.cdiv(n_rows, rows),)](
            x, r, g, shift, scale, y, x_out, n_rows, steps, chans,
            x.stride(0), x.stride(1), r.stride(0), r.stride(1), r.stride(2), g.stride(0), shift.stride(0),
            scale.stride(0), y.stride(0), y.stride(1), x_out.stride(0), x_out.stride(1), float(eps),
            HAS_RES=residual is not None, ROWS=rows, BLOCK=block, num_warps=4,
        )
    return y, x_out
