"""DiT LayerNorm + adaLN modulate (+ gated residual) kernel vs the block's torch ops."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.kernels import adaln_modulate as K
from editx.layers import kernel_backend
from editx.layers.norms import adaln_modulate
from kernel_testing import DEVICE, DTYPES, big, max_err, needs_kernels, randn

pytestmark = needs_kernels


def _bound(dtype: torch.dtype, ref: torch.Tensor) -> float:
    """fp32: summation order of mean/variance only (~1e-6 on O(1) values). bf16/fp16: the reference
    rounds after each of ~5 ops (add, LN, 1+scale, product, + shift) and the kernel once at the end:
    a few units in the last place of the largest value."""
    if dtype == torch.float32:
        return 1e-5
    return 4 * torch.finfo(dtype).eps * float(ref.double().abs().max())


@pytest.mark.parametrize("steps", [1, 3, 7, 111, big(300, 1500)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_with_and_without_gated_residual(dtype, steps):
    gen = torch.Generator().manual_seed(steps)
    chans = big(96, 512)
    x = randn(2, steps, chans, dtype=dtype, generator=gen, scale=2.0)
    mods = randn(2, 1, 4 * chans, dtype=dtype, generator=gen, scale=0.5)
    shift, scale, gate, _ = mods.chunk(4, dim=-1)  # [B, 1, C] views, as the DiT's chunk(9) gives
    y, same = K.adaln_modulate(x, shift, scale, 1e-6)
    y_ref, _ = K.adaln_modulate_ref(x, shift, scale, 1e-6)
    assert same is x and max_err(y, y_ref) <= _bound(dtype, y_ref)
    branch = randn(2, chans, steps, dtype=dtype, generator=gen).transpose(1, 2)  # the conv branch's layout
    y, x_new = K.adaln_modulate(x, shift, scale, 1e-6, residual=branch, gate=gate)
    y_ref, x_ref = K.adaln_modulate_ref(x, shift, scale, 1e-6, residual=branch, gate=gate)
    assert max_err(x_new, x_ref) <= _bound(dtype, x_ref)
    assert max_err(y, y_ref) <= _bound(dtype, y_ref)


def test_layer_dispatch_forced_triton_equals_reference():
    gen = torch.Generator().manual_seed(1)
    x, branch = randn(2, 5, 32, generator=gen), randn(2, 5, 32, generator=gen)
    shift, scale, gate = (randn(2, 1, 32, generator=gen) for _ in range(3))
    with kernel_backend("triton", "adaln"):
        got = adaln_modulate(x, shift, scale, 1e-6, branch, gate)
    with kernel_backend("reference"):
        ref = adaln_modulate(x, shift, scale, 1e-6, branch, gate)
    for g, r in zip(got, ref):
        assert max_err(g, r) <= 1e-5


def test_bad_arguments_raise_clear_errors():
    x = torch.zeros(2, 4, 8, device=DEVICE)
    mod = torch.zeros(2, 1, 8, device=DEVICE)
    with pytest.raises(InvalidInputError, match="shift"):
        K.adaln_modulate(x, torch.zeros(2, 4, 8, device=DEVICE), mod, 1e-6)
    with pytest.raises(InvalidInputError, match="both or neither"):
        K.adaln_modulate(x, mod, mod, 1e-6, residual=x)
    with pytest.raises(InvalidInputError, match="residual"):
        K.adaln_modulate(x, mod, mod, 1e-6, residual=x[:, :3], gate=mod)
    with pytest.raises(InvalidInputError, match="scale"):
        K.adaln_modulate(x, mod, mod.half(), 1e-6)
