"""Resampling: strided-conv fast path vs a direct evaluation of the windowed-sinc sum, lengths, round trips."""
from __future__ import annotations

import math

import pytest
import torch

from editx.errors import InvalidInputError
from editx.frontend import resample, resampled_length, sinc_resample_kernel

RATE_PAIRS = [(44100, 16000), (24000, 16000), (16000, 24000), (48000, 24000), (22050, 16000), (8000, 16000)]


def _direct_sinc_resample(x: torch.Tensor, orig_sr: int, new_sr: int, width_zeros: int = 6, rolloff: float = 0.99):
    """Reference: y[j] = sum_i x[i] h(i/orig - j/new), Hann-windowed sinc with cutoff rolloff*min(rate), in float64.

    Written from the formula (not from the fast path): gcd-reduced rates, the filter
    spans +-width input samples around each output instant, zero outside the signal.
    """
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    x = x.double()
    n_out = math.ceil(new * x.shape[-1] / orig)
    y = torch.zeros(n_out, dtype=torch.float64)
    for j in range(n_out):
        block, phase = divmod(j, new)
        centre = block * orig  # the input index the phase's filter is anchored at
        i = torch.arange(centre - width, centre + width + orig)
        t = (i - centre).double() / orig - phase / new
        t = (t * base).clamp(-width_zeros, width_zeros)
        window = torch.cos(t * math.pi / width_zeros / 2) ** 2
        t = t * math.pi
        h = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
        inside = (i >= 0) & (i < x.shape[-1])
        y[j] = (x[i[inside]] * h[inside]).sum()
    return y


@pytest.mark.parametrize("orig_sr,new_sr", RATE_PAIRS)
@pytest.mark.parametrize("n", [1, 7, 441, 1201])
def test_fast_path_matches_direct_sum_on_odd_lengths(orig_sr, new_sr, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n + orig_sr)) * 0.3
    ref = _direct_sinc_resample(x, orig_sr, new_sr)
    for precision in ("float64", "input"):
        got = resample(x[None], orig_sr, new_sr, kernel_precision=precision)
        assert got.shape == (1, resampled_length(n, orig_sr, new_sr)) == (1, ref.shape[0])
        assert (got[0].double() - ref).abs().max() < 2e-5, precision


def test_equal_rates_are_identity_and_batch_dims_are_kept():
    x = torch.randn(3, 2, 1001)
    assert resample(x, 16000, 16000) is x
    y = resample(x, 44100, 16000)
    assert y.shape == (3, 2, math.ceil(1001 * 160 / 441))
    assert torch.allclose(y[1, 0], resample(x[1, 0], 44100, 16000), atol=1e-6)  # batching only reorders sums


def test_round_trip_of_a_band_limited_tone():
    sr = 16000
    t = torch.arange(16001, dtype=torch.float64) / sr
    x = (0.5 * torch.sin(2 * math.pi * 440.0 * t) + 0.2 * torch.sin(2 * math.pi * 3100.0 * t)).float()[None]
    up = resample(x, sr, 24000)
    back = resample(up, 24000, sr)
    # lengths round up at each step: 16001 -> ceil(24001.5) = 24002 -> ceil(16001.33) = 16002
    assert up.shape[-1] == 24002 and back.shape[-1] == 16002
    interior = slice(400, 16001 - 400)  # the ends see zero padding
    assert (back[0, interior] - x[0, interior]).abs().max() < 2e-3


def test_kernel_flavours_differ_only_by_rounding():
    k64, w64 = sinc_resample_kernel(441, 160)
    k32, w32 = sinc_resample_kernel(441, 160, dtype=torch.float32)
    assert w64 == w32 and k64.shape == k32.shape == (160, 1, 2 * w64 + 441)
    assert k64.dtype == torch.float32 and (k64 - k32).abs().max() < 1e-5


def test_half_precision_input_keeps_its_dtype():
    x = torch.randn(1, 999)
    for dtype in (torch.float16, torch.bfloat16):
        y = resample(x.to(dtype), 24000, 16000)
        assert y.dtype == dtype and y.shape == (1, 666)
        assert (y.float() - resample(x.to(dtype).float(), 24000, 16000)).abs().max() < 1e-2


def test_soxr_option_has_the_same_length_and_is_close_on_a_tone():
    sr = 44100
    t = torch.arange(44100 + 17, dtype=torch.float64) / sr
    x = (0.4 * torch.sin(2 * math.pi * 300.0 * t)).float()[None]
    fast = resample(x, sr, 16000, method="soxr")
    ref = resample(x, sr, 16000)
    assert fast.shape == ref.shape and fast.dtype == x.dtype
    assert (fast[0, 500:-500] - ref[0, 500:-500]).abs().max() < 1e-2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(orig_sr=0, new_sr=16000), "orig_sr"),
        (dict(orig_sr=16000, new_sr=-1), "new_sr"),
        (dict(orig_sr=16000.5, new_sr=16000), "orig_sr"),
        (dict(orig_sr=24000, new_sr=16000, method="linear"), "method"),
        (dict(orig_sr=24000, new_sr=16000, kernel_precision="half"), "kernel_precision"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        resample(torch.zeros(1, 100), **kwargs)


def test_bad_waveforms():
    with pytest.raises(InvalidInputError, match="floating"):
        resample(torch.zeros(1, 100, dtype=torch.int16), 24000, 16000)
    with pytest.raises(InvalidInputError, match="no samples"):
        resample(torch.zeros(1, 0), 24000, 16000)
