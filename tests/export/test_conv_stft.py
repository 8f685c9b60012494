"""The vocoder graph's convolutional STFT / iSTFT equal torch.stft / torch.istft (as HiFT calls them)."""
from __future__ import annotations

import pytest
import torch

from editx.export.onnx_hift import ConvISTFT, ConvSTFT

N_FFT, HOP = 16, 4  # HiFT's istft_params (every shipped config)
# Both sides sum 16 products in float32 (FFT vs direct DFT): measured max error 2.5e-7 of the
# output's scale over these sizes; 1e-6 (~8 float32 ulps of the scale) bounds it with room.
REL_TOL = 1e-6


def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, dtype=torch.float64).float()


@pytest.mark.parametrize("length", [9, 37, 481, 4803, 24000])
def test_conv_stft_equals_torch_stft(length):
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    ref = torch.view_as_real(torch.stft(x, N_FFT, HOP, N_FFT, window=_window(), return_complex=True))
    ref = torch.cat([ref[..., 0], ref[..., 1]], dim=1)  # HiFT's [real | imag] channels
    got = ConvSTFT(N_FFT, HOP)(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= REL_TOL * ref.abs().max()


@pytest.mark.parametrize("frames", [2, 3, 121, 1201])
def test_conv_istft_equals_torch_istft(frames):
    g = torch.Generator().manual_seed(frames)
    real, imag = (10 * torch.randn(2, N_FFT // 2 + 1, frames, generator=g) for _ in range(2))
    ref = torch.istft(torch.complex(real, imag), N_FFT, HOP, N_FFT, window=_window())
    got = ConvISTFT(N_FFT, HOP)(real, imag)
    assert got.shape == ref.shape == (2, HOP * (frames - 1))
    assert (got - ref).abs().max() <= REL_TOL * ref.abs().max()


def test_istft_inverts_stft():
    x = torch.randn(1, 4800, generator=torch.Generator().manual_seed(1))
    spec = ConvSTFT(N_FFT, HOP)(x)
    back = ConvISTFT(N_FFT, HOP)(spec[:, : N_FFT // 2 + 1], spec[:, N_FFT // 2 + 1:])
    assert back.shape == x.shape and (back - x).abs().max() < 1e-5
