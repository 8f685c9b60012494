"""Step1 SwiGLU gate kernel (silu(gate)·up) vs torch."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.kernels import swiglu as K
from editx.layers import kernel_backend
from editx.layers.activations import swiglu
from kernel_testing import DEVICE, DTYPES, big, needs_kernels, randn

pytestmark = needs_kernels


@pytest.mark.parametrize("cols", [1, 7, 1000, big(2049, 8192)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_matches_reference(dtype, cols):
    """Same rounding points as torch (silu in fp32 rounded, then the product rounded); the exp of
    Triton and of torch may differ by an ulp in fp32, which can flip one rounding of the silu:
    ≤ 2 ulp of the result, relative (fp32: a few ulp)."""
    gen = torch.Generator().manual_seed(cols)
    for rows in (1, 3, big(17, 111)):
        g = randn(rows, cols, dtype=dtype, generator=gen, scale=4.0)
        u = randn(rows, cols, dtype=dtype, generator=gen)
        got, ref = K.swiglu(g, u), K.swiglu_ref(g, u)
        eps = torch.finfo(dtype).eps if dtype != torch.float32 else 4 * torch.finfo(dtype).eps
        assert ((got.double() - ref.double()).abs() <= 2 * eps * ref.double().abs() + 1e-30).all()


def test_views_of_a_fused_projection_and_dispatch():
    gen = torch.Generator().manual_seed(3)
    both = randn(2, 5, 2 * 96, generator=gen)
    g, u = both.split(96, dim=-1)  # strided rows, contiguous last dim
    with kernel_backend("triton", "swiglu"):
        got = swiglu(g, u)
    with kernel_backend("reference"):
        ref = swiglu(g, u)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_bad_arguments_raise_clear_errors():
    g = torch.zeros(2, 8, device=DEVICE)
    with pytest.raises(InvalidInputError, match="up"):
        K.swiglu(g, torch.zeros(2, 9, device=DEVICE))
    with pytest.raises(InvalidInputError, match="up"):
        K.swiglu(g, torch.zeros(2, 8, device=DEVICE, dtype=torch.float16))
    with pytest.raises(InvalidInputError, match="gate"):
        K.swiglu(torch.zeros(2, 8, dtype=torch.long, device=DEVICE), g)


def test_launches_from_several_threads_at_once():
    """The engine launches kernels from its LLM thread and its decoder worker at the same time:
    compiled kernels allow that; the interpreter only with editx's serialising shim (without it,
    one launch un-patches triton.language under another and this test fails)."""
    import threading

    gen = torch.Generator().manual_seed(5)
    inputs = [(randn(3, 37, generator=gen, scale=4.0), randn(3, 37, generator=gen)) for _ in range(4)]
    errors: list[BaseException] = []

    def worker(g, u):
        try:
            for _ in range(15):
                torch.testing.assert_close(K.swiglu(g, u), K.swiglu_ref(g, u), rtol=1e-6, atol=1e-7)
        except BaseException as exc:  # collected: asserted in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=pair) for pair in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
