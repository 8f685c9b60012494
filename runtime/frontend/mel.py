"""Mel spectrograms: the flow model's 24 kHz prompt mel and the vq06 tokenizer's whisper log-mel.

Both use a Slaney-style mel filterbank (librosa `filters.mel`, htk=False, norm="slaney"),
rebuilt here in numpy with librosa's float64 arithmetic and float32 storage so the
weights agree with librosa's to the last bit.

Precision: upstream computes these spectra in float32, and in quiet frames (bins whose
magnitude is near the 1e-9 / 1e-10 floors) the float32 FFT's rounding moves log values by
up to ~3e-4; that rounding differs between FFT libraries and CPUs (MKL code paths,
pocketfft), so no float32 implementation reproduces upstream's exactly. By default
(`precision=torch.float64`) the spectrum is computed in float64 from the float32 signal,
so our features sit within float32 output rounding of the exact values and the distance
to upstream's is upstream's own rounding only. `precision=torch.float32` is upstream's
arithmetic (about 2x faster, same accuracy class as upstream). Outputs are float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

# Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def slaney_mel_filterbank(
    sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """`librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)` (Slaney): `[n_mels, n_fft//2 + 1]` float32.

    Triangles between consecutive mel-spaced edge frequencies, each scaled by
    2 / (upper edge - lower edge) so every band has roughly constant energy.
    """
    return _slaney_mel_cached(float(sample_rate), int(n_fft), int(n_mels), float(fmin),
                              None if fmax is None else float(fmax)).copy()


@lru_cache(maxsize=16)
def _slaney_mel_cached(sample_rate, n_fft, n_mels, fmin, fmax):
    if fmax is None:
        fmax = sample_rate / 2
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fft_freqs = np.arange(0, n_fft // 2 + 1) * (1.0 / (n_fft * (1.0 / sample_rate)))  # = np.fft.rfftfreq
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))  # edges: [n_mels + 2] Hz
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_freqs)  # ramps: [n_mels + 2, n_bins]
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))  # rounded to float32 here, as librosa
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, np.newaxis]
    return weights


def _hz_to_mel(freq: float) -> float:
    if freq >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + np.log(freq / _MIN_LOG_HZ) / _LOGSTEP
    return freq / _F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freqs = _F_SP * mels
    log_part = mels >= _MIN_LOG_MEL
    freqs[log_part] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_part] - _MIN_LOG_MEL))
    return freqs


def _mel_tensor(sample_rate, n_fft, n_mels, fmin, fmax, device) -> torch.Tensor:
    return torch.from_numpy(_slaney_mel_cached(float(sample_rate), n_fft, n_mels, float(fmin),
                                               None if fmax is None else float(fmax))).to(device)


# -- prompt mel (CosyVoice `mel_spectrogram`) ---------------------------------------------
@dataclass(slots=True, frozen=True)
class MelConfig:
    """The flow model's prompt-mel settings (cosyvoice.yaml `mel_conf`)."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float | None = 8000.0

    def __post_init__(self) -> None:
        for name in ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size"):
            if int(getattr(self, name)) <= 0:
                raise InvalidInputError(f"mel_conf.{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.win_size > self.n_fft:
            raise InvalidInputError(f"mel_conf.win_size: {self.win_size} exceeds n_fft {self.n_fft}")
        if (self.n_fft - self.hop_size) % 2:
            raise InvalidInputError("mel_conf: n_fft - hop_size must be even (symmetric reflect padding)")

    @classmethod
    def from_mel_conf(cls, conf: Mapping[str, Any]) -> "MelConfig":
        """Parse cosyvoice.yaml's `mel_conf` mapping (keys = `mel_spectrogram` kwargs; `center` must be false)."""
        known = {"n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax", "center"}
        unknown = sorted(set(conf) - known)
        if unknown:
            raise InvalidInputError(f"mel_conf: unknown keys {unknown}")
        if conf.get("center", False):
            raise InvalidInputError("mel_conf.center: only center=False (upstream's prompt mel) is supported")
        args = {k: v for k, v in conf.items() if k != "center"}
        return cls(**args)

    @classmethod
    def full(cls) -> "MelConfig":
        """CosyVoice-300M-25Hz's `mel_conf` (spec §5.3)."""
        return cls()

    @classmethod
    def tiny(cls) -> "MelConfig":
        """Same as `full()`: the tiny flow model keeps the 80-bin, 24 kHz, 50 frames/s mel."""
        return cls()


def prompt_mel(
    wav24k: torch.Tensor, config: MelConfig = MelConfig(), precision: torch.dtype = torch.float64
) -> torch.Tensor:
    """The flow model's prompt mel: `wav24k [N]` or `[1, N]` at `config.sampling_rate` -> `[1, T, num_mels]` float32.

    Reflect-pad (n_fft - hop)/2 on both sides, STFT without centering (periodic Hann),
    magnitude sqrt(re^2 + im^2 + 1e-9), Slaney mel, log(clamp(., 1e-5)).
    T = floor(N / hop) for N >= hop. See the module doc for `precision`.
    """
    x = _mono_float(wav24k, "wav24k", precision)  # x: [1, N]
    pad = (config.n_fft - config.hop_size) // 2
    if x.shape[-1] <= pad:
        raise InvalidInputError(f"wav24k: {x.shape[-1]} samples is too short for the prompt mel (need > {pad})")
    x = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(config.win_size, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, config.n_fft, hop_length=config.hop_size, win_length=config.win_size, window=window,
                      center=False, normalized=False, onesided=True, return_complex=True)
    # re^2 + im^2 as two elementwise ops: upstream's view_as_real(...).pow(2).sum(-1) adds the same two
    # squares (bit-identical), but a reduction over a last axis of 2 took 6 ms per 5 s prompt here.
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)  # magnitude: [1, F, T]
    basis = _mel_tensor(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax, x.device)
    mel = torch.matmul(basis.to(x.dtype), magnitude)  # mel: [1, num_mels, T]
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2).float()


# -- whisper log-mel (vq06 tokenizer input) ------------------------------------------------
WHISPER_SAMPLE_RATE = 16000
WHISPER_N_FFT = 400
WHISPER_HOP = 160


def whisper_log_mel(wav16k: torch.Tensor, n_mels: int = 128, precision: torch.dtype = torch.float64) -> torch.Tensor:
    """openai-whisper's `log_mel_spectrogram` (20240930): `wav16k [N]` or `[1, N]` -> `[1, n_mels, N // 160]` float32.

    Centered STFT (reflect pad 200) with n_fft 400, hop 160, periodic Hann; the last frame
    is dropped; power spectrum; Slaney mel filters for 16 kHz / 400-point FFT; log10 with
    a 1e-10 floor; values below (max - 8) raised to it; (x + 4) / 4. See the module doc
    for `precision`.
    """
    x = _mono_float(wav16k, "wav16k", precision)[0]  # x: [N]
    if x.shape[0] <= WHISPER_N_FFT // 2:
        raise InvalidInputError(f"wav16k: {x.shape[0]} samples is too short for the whisper log-mel (need > 200)")
    window = torch.hann_window(WHISPER_N_FFT, device=x.device, dtype=x.dtype)
    stft = torch.stft(x, WHISPER_N_FFT, WHISPER_HOP, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # power: [201, T]
    filters = _mel_tensor(WHISPER_SAMPLE_RATE, WHISPER_N_FFT, n_mels, 0.0, None, x.device).to(x.dtype)
    mel = filters @ power  # mel: [n_mels, T]
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0)[None].float()


def _mono_float(wav: torch.Tensor, name: str, precision: torch.dtype) -> torch.Tensor:
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise InvalidInputError(f"{name}: expected a floating-point tensor, got {getattr(wav, 'dtype', type(wav))}")
    if precision not in (torch.float32, torch.float64):
        raise InvalidInputError(f"precision: expected torch.float32 or torch.float64, got {precision}")
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2 or wav.shape[0] != 1:
        raise InvalidInputError(f"{name}: expected [N] or [1, N] (mono), got shape {tuple(wav.shape)}")
    return wav.to(precision)
