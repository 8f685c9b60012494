"""Kaldi fbank: fast path vs a per-frame float64 reference written from Kaldi's recipe, shapes, dither."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editx.errors import InvalidInputError
from editx.frontend import kaldi_fbank, kaldi_mel_banks


def _reference_fbank(x: np.ndarray, sr: int, n_mels: int, window: str, win_ms=25.0, shift_ms=10.0) -> np.ndarray:
    """Kaldi compute-fbank-feats (snip_edges, no dither), frame by frame in float64."""
    win, shift = int(sr * win_ms / 1000), int(sr * shift_ms / 1000)
    n_fft = 1 << (win - 1).bit_length()
    n = np.arange(win)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
    w = hann**0.85 if window == "povey" else 0.54 - 0.46 * np.cos(2 * np.pi * n / (win - 1))

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    step = (hi - lo) / (n_mels + 1)
    bin_mel = mel(np.arange(n_fft // 2) * sr / n_fft)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        rise = (bin_mel - left) / (centre - left)
        fall = (right - bin_mel) / (right - centre)
        banks[m, : n_fft // 2] = np.clip(np.minimum(rise, fall), 0.0, None)
    out = []
    for t in range(1 + (len(x) - win) // shift):
        frame = x[t * shift : t * shift + win].astype(np.float64)
        frame = frame - frame.mean()
        frame = frame - 0.97 * np.concatenate([frame[:1], frame[:-1]])
        power = np.abs(np.fft.rfft(frame * w, n_fft)) ** 2
        out.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    return np.array(out)


@pytest.mark.parametrize("n", [400, 401, 559, 560, 1999])
@pytest.mark.parametrize("window", ["povey", "hamming"])
def test_matches_per_frame_reference_on_odd_lengths(n, window):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 1000
    got = kaldi_fbank(torch.from_numpy(x), 16000, num_mel_bins=80, window_type=window)
    ref = _reference_fbank(x, 16000, 80, window)
    assert got.shape == (1 + (n - 400) // 160, 80) == ref.shape
    assert np.abs(got.numpy() - ref).max() < 2e-3  # float32 FFT rounding in low bins
    got64 = kaldi_fbank(torch.from_numpy(x).double(), 16000, num_mel_bins=80, window_type=window)
    # float64 signal path; the remaining gap is the float32 mel banks (built as torchaudio builds them)
    assert got64.dtype == torch.float64 and np.abs(got64.numpy() - ref).max() < 1e-4


def test_other_rates_and_frame_sizes():
    x = np.random.default_rng(1).standard_normal(4321)
    got = kaldi_fbank(torch.from_numpy(x), 22050, num_mel_bins=40, frame_length_ms=20, frame_shift_ms=7.5)
    ref = _reference_fbank(x, 22050, 40, "povey", 20, 7.5)
    assert got.shape == ref.shape and np.abs(got.numpy() - ref).max() < 1e-4


def test_accepts_1_n_and_half_precision():
    x = torch.randn(1, 999)
    a = kaldi_fbank(x, 16000)
    assert torch.equal(a, kaldi_fbank(x[0], 16000)) and a.shape == (4, 80)
    b = kaldi_fbank(x.to(torch.bfloat16), 16000)
    assert b.dtype == torch.float32 and b.shape == a.shape


def test_dither_draws_from_the_given_generator():
    x = torch.randn(3000) * 100
    plain = kaldi_fbank(x, 16000, dither=0.0)
    a = kaldi_fbank(x, 16000, dither=1.0, generator=torch.Generator().manual_seed(3))
    b = kaldi_fbank(x, 16000, dither=1.0, generator=torch.Generator().manual_seed(3))
    c = kaldi_fbank(x, 16000, dither=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    # silence: without dither every bin sits on the epsilon floor, with dither it does not
    silent = kaldi_fbank(torch.zeros(800), 16000)
    assert torch.allclose(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))
    noisy = kaldi_fbank(torch.zeros(800), 16000, dither=1.0, generator=torch.Generator().manual_seed(0))
    assert (noisy > silent).all()


def test_mel_banks_shape_and_triangles():
    banks = kaldi_mel_banks(80, 512, 16000.0, 20.0, 0.0)
    assert banks.shape == (80, 256) and banks.dtype == torch.float32
    assert (banks >= 0).all() and banks.max() <= 1.0 and (banks.max(dim=1).values > 0.4).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(wav=torch.zeros(399)), "shorter than one"),
        (dict(wav=torch.zeros(2, 1000)), "mono"),
        (dict(wav=torch.zeros(1000, dtype=torch.int32)), "floating"),
        (dict(wav=torch.zeros(1000), window_type="blackmanish"), "window_type"),
        (dict(wav=torch.zeros(1000), num_mel_bins=3), "num_mel_bins"),
        (dict(wav=torch.zeros(1000), frame_shift_ms=0.0), "frame"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        kaldi_fbank(sample_rate=16000, **kwargs)
