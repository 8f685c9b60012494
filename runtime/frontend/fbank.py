"""Kaldi-compatible log mel filterbank (what `torchaudio.compliance.kaldi.fbank` computes).

Used twice upstream: CAM++'s input (povey window, float signal, dither 0) and the vq02
Paraformer front end (hamming window, signal x 32768, dither 1.0 upstream / 0 in fixtures).
Per frame (snip_edges: only frames that fit, `1 + (N - win) // shift` of them):
optional Gaussian dither, remove the frame mean, pre-emphasis 0.97 (first sample uses
itself as predecessor), window, zero-pad to the next power of two, |rfft|^2, Kaldi
triangular mel banks on the mel scale 1127 ln(1 + f/700) between 20 Hz and Nyquist,
log with a floor at float32 epsilon. The mel banks are built in float32 on the CPU in
torchaudio's operation order so the roundings agree.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

WindowType = Literal["povey", "hamming", "hanning", "rectangular"]

# Kaldi floors the mel energies at numeric_limits<float>::epsilon() before the log.
FLOAT_EPSILON = torch.finfo(torch.float32).eps


def kaldi_fbank(
    wav: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    window_type: WindowType = "povey",
    energy_floor: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """Log mel filterbank of a mono signal: `wav [N]` or `[1, N]` -> `[T, num_mel_bins]`.

    `T = 1 + (N - win) // shift` with `win = int(sr * frame_length_ms / 1000)`.
    `dither` adds `dither * N(0, 1)` per frame sample, drawn from `generator` (the global
    RNG when None, as upstream). `energy_floor` only floors Kaldi's energy term, which
    fbank without `use_energy` discards, so it does not change the result; it is accepted
    for signature parity. `high_freq <= 0` is an offset from Nyquist.
    Half-precision input is computed in float32; the result is float32 (float64 input
    stays float64).
    """
    del energy_floor  # no effect on fbank without use_energy (see docstring)
    x = _mono_signal(wav)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    window_size = int(sample_rate * frame_length_ms * 0.001)
    if window_shift <= 0 or window_size < 2:
        raise InvalidInputError(
            f"frame_length_ms/frame_shift_ms: give at least 2 samples per frame and 1 per shift at {sample_rate} Hz"
        )
    if x.shape[0] < window_size:
        raise InvalidInputError(f"wav: {x.shape[0]} samples is shorter than one {window_size}-sample frame")
    padded_size = 1 << (window_size - 1).bit_length()  # round up to a power of two

    frames = fbank_frames(x, window_size, window_shift)  # frames: [T, win]
    if dither != 0.0:
        noise = torch.randn(frames.shape, generator=generator, device=x.device, dtype=x.dtype)
        frames = frames + noise * dither
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC per frame
    if preemphasis != 0.0:
        previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
        frames = frames - preemphasis * previous
    frames = frames * feature_window(window_type, window_size, x.device, x.dtype)[None, :]
    frames = F.pad(frames, (0, padded_size - window_size))  # frames: [T, padded]

    power = torch.fft.rfft(frames).abs().pow(2.0)  # power: [T, padded//2 + 1]
    banks = kaldi_mel_banks(num_mel_bins, padded_size, float(sample_rate), low_freq, high_freq)
    banks = F.pad(banks.to(device=x.device, dtype=x.dtype), (0, 1))  # Nyquist bin gets no weight
    mel = torch.mm(power, banks.T)  # mel: [T, num_mel_bins]
    return torch.clamp_min(mel, FLOAT_EPSILON).log()


def fbank_num_frames(num_samples: int, window_size: int = 400, window_shift: int = 160) -> int:
    """Frames Kaldi's snip_edges framing yields for `num_samples` (0 if shorter than one frame)."""
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def fbank_frames(x: torch.Tensor, window_size: int, window_shift: int) -> torch.Tensor:
    """Overlapping frames of `x [N]` -> `[T, window_size]` (a copy, snip_edges framing)."""
    return x.unfold(0, window_size, window_shift).contiguous()


def feature_window(window_type: str, size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Kaldi's analysis windows (symmetric, i.e. torch `periodic=False`): `[size]`."""
    if window_type == "hanning":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype)
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, device=device, dtype=dtype)
    if window_type == "povey":
        # Kaldi's default: a symmetric Hann window raised to the power 0.85
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(size, device=device, dtype=dtype)
    raise InvalidInputError(f"window_type: expected povey, hamming, hanning or rectangular, got {window_type!r}")


@lru_cache(maxsize=16)
def kaldi_mel_banks(
    num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float, high_freq: float
) -> torch.Tensor:
    """Kaldi triangular mel filters over the first `padded/2` FFT bins: `[num_bins, padded/2]` float32 (CPU).

    Triangles are equally spaced on the mel scale between `low_freq` and `high_freq`
    (<= 0: offset from Nyquist) and evaluated at each bin's mel value; no area normalisation.
    """
    if num_bins <= 3:
        raise InvalidInputError(f"num_mel_bins: Kaldi needs more than 3 mel bins, got {num_bins}")
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise InvalidInputError(f"low_freq/high_freq: need 0 <= {low_freq} < {high_freq} <= Nyquist {nyquist}")
    fft_bin_width = sample_rate / padded_window_size
    mel_low, mel_high = _mel_scalar(low_freq), _mel_scalar(high_freq)
    mel_delta = (mel_high - mel_low) / (num_bins + 1)  # bins overlap by half: num_bins + 1 steps

    b = torch.arange(num_bins).unsqueeze(1)  # int64 [num_bins, 1]; float32 math below, as torchaudio
    left = mel_low + b * mel_delta
    center = mel_low + (b + 1.0) * mel_delta
    right = mel_low + (b + 2.0) * mel_delta
    bin_mel = (1127.0 * (1.0 + fft_bin_width * torch.arange(padded_window_size / 2) / 700.0).log()).unsqueeze(0)
    up_slope = (bin_mel - left) / (center - left)
    down_slope = (right - bin_mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up_slope, down_slope))


def _mel_scalar(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


def _mono_signal(wav: torch.Tensor) -> torch.Tensor:
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise InvalidInputError(f"wav: expected a floating-point tensor, got {getattr(wav, 'dtype', type(wav))}")
    if wav.dim() == 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() != 1:
        raise InvalidInputError(f"wav: expected [N] or [1, N] (mono), got shape {tuple(wav.shape)}")
    if wav.dtype in (torch.float16, torch.bfloat16):
        wav = wav.float()
    return wav
