"""Prompt mel / whisper log-mel / Slaney filterbank vs float64 numpy references written from the formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editx.errors import InvalidInputError
from editx.frontend import MelConfig, prompt_mel, slaney_mel_filterbank, whisper_log_mel


def _slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000.0, f * 3.0 / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-9) / 1000.0) / np.log(6.4))


def _slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def _reference_filterbank(sr, n_fft, n_mels, fmin, fmax):
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, c, hi = edges[m : m + 3]
        tri = np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c))
        fb[m] = np.maximum(tri, 0.0) * 2.0 / (hi - lo)
    return fb


@pytest.mark.parametrize(
    "args", [(24000, 1920, 80, 0.0, 8000.0), (16000, 400, 128, 0.0, None), (22050, 1024, 80, 30.0, 7000.0)]
)
def test_slaney_filterbank_matches_formula(args):
    sr, n_fft, n_mels, fmin, fmax = args
    got = slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = _reference_filterbank(sr, n_fft, n_mels, fmin, sr / 2 if fmax is None else fmax)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def _reference_prompt_mel(x: np.ndarray, n_fft=1920, hop=480, sr=24000, n_mels=80, fmax=8000.0):
    pad = (n_fft - hop) // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([xp[t * hop : t * hop + n_fft] for t in range(1 + (len(xp) - n_fft) // hop)])
    spec = np.fft.rfft(frames * window, axis=1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    mel = mag @ _reference_filterbank(sr, n_fft, n_mels, 0.0, fmax).T
    return np.log(np.maximum(mel, 1e-5))


@pytest.mark.parametrize("n", [721, 1999, 24001])
def test_prompt_mel_shape_and_values(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    got = prompt_mel(torch.from_numpy(x))
    assert got.shape == (1, n // 480, 80) and got.dtype == torch.float32
    assert np.abs(got[0].numpy() - _reference_prompt_mel(x)).max() < 1e-4
    fast = prompt_mel(torch.from_numpy(x)[None], precision=torch.float32)
    assert (fast - got).abs().max() < 1e-2  # float32 FFT rounding only


def _reference_whisper(x: np.ndarray, n_mels=128):
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    xp = np.pad(x.astype(np.float64), 200, mode="reflect")
    frames = np.stack([xp[t * 160 : t * 160 + 400] for t in range(1 + (len(xp) - 400) // 160)])
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = power[:-1] @ _reference_filterbank(16000, 400, n_mels, 0.0, 8000.0).T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T


@pytest.mark.parametrize("n", [201, 480, 16001])
def test_whisper_log_mel_shape_and_values(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.2
    got = whisper_log_mel(torch.from_numpy(x)[None])
    assert got.shape == (1, 128, n // 160) and got.dtype == torch.float32
    assert np.abs(got[0].numpy() - _reference_whisper(x)).max() < 1e-5
    assert whisper_log_mel(torch.from_numpy(x), n_mels=80).shape == (1, 80, n // 160)


def test_mel_config_parsing():
    conf = dict(n_fft=1920, num_mels=80, sampling_rate=24000, hop_size=480, win_size=1920, fmin=0, fmax=8000)
    assert MelConfig.from_mel_conf(conf) == MelConfig()
    assert MelConfig.from_mel_conf({**conf, "center": False}) == MelConfig()
    with pytest.raises(InvalidInputError, match="unknown"):
        MelConfig.from_mel_conf({**conf, "power": 2})
    with pytest.raises(InvalidInputError, match="center"):
        MelConfig.from_mel_conf({**conf, "center": True})
    with pytest.raises(InvalidInputError, match="hop_size"):
        MelConfig(hop_size=0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: prompt_mel(torch.zeros(720)), "too short"),
        (lambda: prompt_mel(torch.zeros(2, 5000)), "mono"),
        (lambda: prompt_mel(torch.zeros(5000, dtype=torch.int16)), "floating"),
        (lambda: prompt_mel(torch.zeros(5000), precision=torch.float16), "precision"),
        (lambda: whisper_log_mel(torch.zeros(200)), "too short"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()
