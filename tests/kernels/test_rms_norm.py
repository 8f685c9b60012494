"""Step1 RMSNorm (+ residual add) kernel vs upstream's torch ops."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.kernels import rms_norm as K
from editx.layers import kernel_backend
from editx.layers.norms import add_rms_norm, rms_norm
from kernel_testing import DEVICE, DTYPES, big, needs_kernels, randn

pytestmark = needs_kernels


def _close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """The kernel rounds at the same points as torch; only the fp32 mean of squares is summed in
    another order, which can move the rsqrt (rounded to the activation dtype) by one unit in the
    last place and the product by one more: ≤ 2 ulp, relative. fp32: rounding order only."""
    eps = torch.finfo(dtype).eps
    bound = (2 * eps if dtype != torch.float32 else 8 * eps) * ref.double().abs() + 1e-30
    assert ((got.double() - ref.double()).abs() <= bound).all(), f"max err {(got.double() - ref.double()).abs().max()}"


@pytest.mark.parametrize("cols", [1, 7, 128, big(1000, 3072)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_fused_residual_match_reference(dtype, cols):
    gen = torch.Generator().manual_seed(cols)
    for shape in [(1, cols), (3, 5, cols), (big(37, 111), cols)]:
        x = randn(*shape, dtype=dtype, generator=gen, scale=3.0)
        res = randn(*shape, dtype=dtype, generator=gen)
        w = (1 + 0.1 * torch.randn(cols, generator=gen)).to(DEVICE, dtype)
        _close(K.rms_norm(x, w, 1e-5), K.rms_norm_ref(x, w, 1e-5), dtype)
        y, h = K.add_rms_norm(x, res, w, 1e-5)
        y_ref, h_ref = K.add_rms_norm_ref(x, res, w, 1e-5)
        assert torch.equal(h, h_ref), "h = x + residual is one rounded add, as torch's"
        _close(y, y_ref, dtype)


def test_strided_rows():
    """Rows of a bigger buffer (e.g. the last token of each sequence); the last dim must be contiguous."""
    gen = torch.Generator().manual_seed(1)
    x = randn(4, 9, 64, generator=gen)[:, ::2]
    w = randn(64, generator=gen)
    _close(K.rms_norm(x, w, 1e-6), K.rms_norm_ref(x, w, 1e-6), torch.float32)


def test_layer_dispatch_forced_triton_equals_reference():
    gen = torch.Generator().manual_seed(2)
    x, r = randn(2, 5, 48, generator=gen), randn(2, 5, 48, generator=gen)
    w = randn(48, generator=gen)
    with kernel_backend("triton", "rms_norm"):
        got = rms_norm(x, w, 1e-5), *add_rms_norm(x, r, w, 1e-5)
    with kernel_backend("reference"):
        ref = rms_norm(x, w, 1e-5), *add_rms_norm(x, r, w, 1e-5)
    for g, f in zip(got, ref):
        _close(g, f, torch.float32)


def test_bad_arguments_raise_clear_errors():
    x = torch.zeros(2, 8, device=DEVICE)
    with pytest.raises(InvalidInputError, match="weight"):
        K.rms_norm(x, torch.ones(7, device=DEVICE), 1e-5)
    with pytest.raises(InvalidInputError, match="weight"):
        K.rms_norm(x, torch.ones(8, device=DEVICE, dtype=torch.float16), 1e-5)
    with pytest.raises(InvalidInputError, match="residual"):
        K.add_rms_norm(x, torch.zeros(2, 9, device=DEVICE), torch.ones(8, device=DEVICE), 1e-5)
    with pytest.raises(InvalidInputError, match="contiguous"):
        K.rms_norm(torch.zeros(8, 2, device=DEVICE).t(), torch.ones(8, device=DEVICE), 1e-5)
