"""HiFT Snake kernel (x + sin²(αx)/(α + 1e-9) in one pass) vs the reference and fp64 truth, and the
HiFT vocoder with the kernel vs without."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.kernels import snake as K
from editx.layers import kernel_backend
from editx.layers.activations import snake
from kernel_testing import DEVICE, DTYPES, big, needs_kernels, randn

pytestmark = needs_kernels


def truth(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The exact activation in fp64 on the CPU."""
    x, a = x.double().cpu(), alpha.double().cpu().view(1, -1, 1)
    return x + torch.sin(x * a).pow(2) / (a + K.SNAKE_EPS)


def inputs(batch, channels, steps, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn(batch, channels, steps, dtype=dtype, generator=gen, scale=3.0)  # HiFT activations reach |x| ~ 10
    # alphas of trained Snakes lie around 0.1-2; include one tiny alpha (sin²(αx)/α → α·x² stays finite)
    alpha = (torch.rand(channels, generator=gen) * 1.9 + 0.1)
    alpha[0] = 1e-3
    return x, alpha.to(DEVICE, dtype)


# B x C x T: odd channel counts and lengths, a single sample, rows shorter and longer than one tile.
SHAPES = [(1, 7, 37), (2, 33, 1), (3, 5, 1000), (1, 3, 2049), (2, big(64, 64), big(1537, 46080))]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_snake_is_as_close_to_the_truth_as_the_reference(dtype, shape):
    """fp32: the reference and the kernel differ only in the sin implementation (torch's vs libdevice /
    numpy's, ~1 ulp) and in rounding the fp32 steps: 8 ulp of max(|y|, 1) covers both, a wrong channel's
    alpha (~0.5 off) moves y by O(1). bf16/fp16: the reference rounds after each of its 6 ops, the
    kernel once: the kernel's error must not exceed the reference's (+ half an ulp of the output)."""
    x, alpha = inputs(*shape, dtype, seed=sum(shape))
    got, ref, exact = K.snake(x, alpha), K.snake_ref(x, alpha), truth(x, alpha)
    assert got.dtype == dtype and got.shape == x.shape
    scale = exact.abs().clamp(min=1.0)
    eps = torch.finfo(dtype).eps
    err_kernel = ((got.double().cpu() - exact).abs() / scale).max().item()
    if dtype == torch.float32:
        assert (got.double().cpu() - ref.double().cpu()).abs().div(scale).max().item() <= 8 * eps
    else:
        err_ref = ((ref.double().cpu() - exact).abs() / scale).max().item()
        assert err_kernel <= max(err_ref, eps / 2) + 1e-12, (err_kernel, err_ref)


def test_dispatch_falls_back_for_what_the_kernel_does_not_take():
    x, alpha = inputs(2, 6, 40, torch.float32, seed=1)
    with kernel_backend("triton", "snake"):
        fused = snake(x, alpha)
    with kernel_backend("reference"):
        torch.testing.assert_close(fused, snake(x, alpha), rtol=8 * torch.finfo(torch.float32).eps, atol=8e-7)
        strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # not contiguous: the reference runs
        torch.testing.assert_close(snake(strided, alpha, backend="auto"), K.snake_ref(strided, alpha))
    with pytest.raises(Exception, match="contiguous"):
        with kernel_backend("triton", "snake"):
            snake(strided, alpha)


def test_bad_arguments_raise_clear_errors():
    x = torch.zeros(2, 4, 9, device=DEVICE)
    with pytest.raises(InvalidInputError, match="alpha"):
        K.snake(x, torch.ones(5, device=DEVICE))
    with pytest.raises(InvalidInputError, match="alpha"):
        K.snake(x, torch.ones(4, device=DEVICE, dtype=torch.float16))
    with pytest.raises(InvalidInputError, match="x"):
        K.snake(torch.zeros(4, 9, device=DEVICE), torch.ones(4, device=DEVICE))
    with pytest.raises(InvalidInputError, match="contiguous"):
        K.snake(x.transpose(1, 2).contiguous().transpose(1, 2), torch.ones(4, device=DEVICE))


def test_hift_with_the_kernel_matches_hift_without():
    """A whole streamed HiFT chunk (72 Snakes between convolutions) with the kernel vs the references:
    fp32, so only the Snakes' last-ulp differences propagate (measured 6e-7 of the peak; a Snake
    with another channel's alpha moves samples by > 1e-2)."""
    from editx.models.hift import HiFTConfig, HiFTGenerator, HiFTStreamState

    torch.manual_seed(0)
    hift = HiFTGenerator(HiFTConfig.tiny()).requires_grad_(False).eval().to(DEVICE)
    mel = torch.randn(1, 80, 30, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    outs = {}
    for backend in ("reference", "triton"):
        with torch.inference_mode(), kernel_backend(backend, "snake"):
            state = HiFTStreamState(mel_cache_len=8)
            audio = hift.vocode_chunk(mel, state, last=True, generator=torch.Generator(DEVICE).manual_seed(3))[0]
        outs[backend] = audio.double().cpu()
    peak = outs["reference"].abs().max().item()
    assert peak > 0 and (outs["triton"] - outs["reference"]).abs().max().item() <= 1e-5 * peak
