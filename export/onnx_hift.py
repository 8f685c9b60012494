"""ONNX graph of the HiFT vocoder's decode: mel + NSF source → waveform.

Inputs (B = batch, T = mel frames, dynamic):
    mel     [B, 80, T]
    source  [B, 1, 480·T]   NSF excitation (f0 prediction and the random source stay in torch:
                            they are cheap and hold the per-request random draws)
Output:
    speech  [B, 480·T]      clamped to ±audio_limit

`torch.stft` / `torch.istft` have no portable ONNX export (opset 17's STFT has no inverse
and TensorRT implements neither), so this graph computes both as convolutions with fixed
windowed-DFT kernels: `ConvSTFT` = reflect pad + strided Conv1d, `ConvISTFT` = ConvTranspose1d
overlap-add divided by the window envelope. With n_fft 16 / hop 4 the kernels are tiny.
Both match torch's centred, one-sided, unnormalised transforms (tests/export/test_conv_stft.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.hift import HiFTGenerator

INPUTS = ("mel", "source")
OUTPUTS = ("speech",)
DYNAMIC_AXES = {"mel": {0: "batch", 2: "frames"}, "source": {0: "batch", 2: "samples"},
                "speech": {0: "batch", 1: "samples"}}


def _dft_basis(n_fft: int, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin kernels [n_fft/2+1, n_fft] (float64): basis[k, n] = trig(2π·k·n / n_fft)."""
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * k * n / n_fft
    return torch.cos(angle), torch.sin(angle)


def hann_window(n_fft: int) -> torch.Tensor:
    """Periodic Hann in float64 (HiFT rounds it to float32 before use, as we do in the kernels)."""
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float64).float().double()


class ConvSTFT(nn.Module):
    """torch.stft(center=True, reflect pad, onesided, unnormalised) as one strided Conv1d.

    x [B, L] → [B, n_fft + 2, L/hop + 1] = [real bins | imaginary bins] (HiFT's layout).
    """

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        w = hann_window(n_fft)
        cos, sin = _dft_basis(n_fft, w)
        # X_k = Σ_n x[n]·w[n]·e^{−2πikn/N}: real part uses +cos, imaginary part −sin.
        kernel = torch.cat([cos * w, -sin * w], dim=0)[:, None, :]  # [n_fft+2, 1, n_fft]
        self.register_buffer("kernel", kernel.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")  # [B, 1, L + n_fft]
        return F.conv1d(x, self.kernel, stride=self.hop)


class ConvISTFT(nn.Module):
    """torch.istft(center=True, onesided, unnormalised, default length) as a ConvTranspose1d.

    real, imag [B, n_fft/2+1, F] → [B, hop·(F−1)]. Like `irfft`, the imaginary parts of
    the DC and Nyquist bins are ignored (their sine kernels are zero).
    """

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        w = hann_window(n_fft)
        cos, sin = _dft_basis(n_fft, w)
        bins = n_fft // 2 + 1
        # irfft: x[n] = (1/N)·Σ_k c_k·(Re_k·cos − Im_k·sin), c_k = 1 for DC/Nyquist, 2 otherwise.
        c = torch.full((bins, 1), 2.0, dtype=torch.float64)
        c[0] = 1.0
        c[-1] = 1.0
        kernel = torch.cat([c * cos * w / n_fft, -c * sin * w / n_fft], dim=0)[:, None, :]  # [2·bins, 1, n_fft]
        self.register_buffer("kernel", kernel.float(), persistent=False)
        self.register_buffer("window_sq", (w * w).float()[None, None, :], persistent=False)  # [1, 1, n_fft]

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        frames = torch.cat([real, imag], dim=1)  # [B, 2·bins, F]
        wave = F.conv_transpose1d(frames, self.kernel, stride=self.hop)[:, 0]  # [B, hop·(F−1) + n_fft]
        # Overlap-added squared window: what torch.istft divides by (same length as `wave`).
        ones = torch.ones_like(real[:1, :1, :])  # [1, 1, F]
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.hop)[:, 0]  # [1, hop·(F−1) + n_fft]
        pad = self.n_fft // 2
        length = wave.shape[1] - 2 * pad
        return wave.narrow(1, pad, length) / envelope.narrow(1, pad, length)


class HiFTDecodeGraph(nn.Module):
    """`HiFTGenerator.decode(mel, source)` with export-friendly STFT / iSTFT (see module doc)."""

    def __init__(self, hift: HiFTGenerator) -> None:
        super().__init__()
        c = hift.config
        self.hift = hift
        self.stft = ConvSTFT(c.istft_n_fft, c.istft_hop)
        self.istft = ConvISTFT(c.istft_n_fft, c.istft_hop)
        self.bins = c.istft_n_fft // 2 + 1
        self.audio_limit = float(c.audio_limit)

    def forward(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        spec = self.stft(source[:, 0])  # [B, n_fft+2, 120·T+1]
        x = self.hift._decode_spectrum(mel, spec)  # [B, n_fft+2, 120·T+1]
        # HiFT's head (`_waveform`): exp magnitude clipped at 100, phase = sin(raw), then iSTFT.
        magnitude = torch.clamp(torch.exp(x[:, : self.bins]), max=1e2)
        phase = torch.sin(x[:, self.bins:])
        wave = self.istft(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.clamp(wave, -self.audio_limit, self.audio_limit)


def example_inputs(hift: HiFTGenerator, frames: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c = hift.config
    mel = torch.randn(batch, c.in_channels, frames, generator=g) - 4.0  # log-mel-like level
    source = 0.1 * torch.randn(batch, 1, frames * c.upsample_scale, generator=g)
    return mel, source


def output_shapes(hift: HiFTGenerator, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    b, _, n = inputs["source"]
    return {"speech": (b, n)}


def input_shapes(hift: HiFTGenerator, batch: int, frames: int) -> dict[str, tuple[int, ...]]:
    c = hift.config
    return {"mel": (batch, c.in_channels, frames), "source": (batch, 1, frames * c.upsample_scale)}
