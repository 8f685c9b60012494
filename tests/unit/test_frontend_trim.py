"""Silence trim: the librosa-style span, upstream's window arithmetic, and cutting / padding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editx.errors import InvalidInputError
from editx.frontend import TrimWindow, apply_trim_window, nonsilent_span, trim_silence, trim_window


def _reference_span(y: np.ndarray, top_db=20.0, frame=512, hop=128):
    """Frame RMS of the centred (zero-padded) signal in float64; frames above max - top_db dB."""
    yp = np.pad(y.astype(np.float64), frame // 2)
    rms = np.array([np.sqrt(np.mean(yp[t * hop : t * hop + frame] ** 2)) for t in range(1 + (len(yp) - frame) // hop)])
    db = 20 * np.log10(np.maximum(rms, 1e-5)) - 20 * np.log10(max(rms.max(), 1e-5))
    loud = np.flatnonzero(db > -top_db)
    return int(loud[0]) * hop, min(len(y), (int(loud[-1]) + 1) * hop)


def _tone_in_silence(n, start, stop, seed=0):
    y = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 1e-4
    t = np.arange(stop - start)
    y[start:stop] += 0.5 * np.sin(2 * np.pi * 220 * t / 16000)
    return y


@pytest.mark.parametrize("n,start,stop", [(16000, 4000, 12000), (10001, 0, 3333), (7777, 5000, 7777), (1000, 100, 300)])
def test_span_matches_reference(n, start, stop):
    y = _tone_in_silence(n, start, stop)
    got = nonsilent_span(y)
    assert got == _reference_span(y)
    assert got[0] <= start and got[1] >= min(stop, n) - 128  # the tone is kept
    assert nonsilent_span(torch.from_numpy(y)[None]) == got


def test_all_zero_signal_is_kept_whole():
    # every frame is 0 dB relative to a zero maximum, as in librosa
    assert nonsilent_span(np.zeros(1000, np.float32)) == (0, 1000)


@pytest.mark.parametrize("start,end", [(0, 0), (100, 5000), (800, 801), (12345, 40000), (2000, 2240)])
def test_window_arithmetic(start, end):
    w = trim_window(start, end)
    assert w.src_start == max(start - 800, 0) and w.pad_left == max(800 - start, 0)
    assert w.out_len == math.ceil((end - start) / 240) * 240 + 4320


def test_apply_window_pads_and_cuts():
    x = torch.arange(1, 10001, dtype=torch.float32)[None]
    short = apply_trim_window(x, TrimWindow(src_start=0, pad_left=300, out_len=5000))
    assert short.shape == (1, 5000) and torch.equal(short[0, :300], torch.zeros(300))
    assert torch.equal(short[0, 300:], x[0, :4700])
    past_end = apply_trim_window(x, TrimWindow(src_start=9000, pad_left=0, out_len=4320))
    assert torch.equal(past_end[0, :1000], x[0, 9000:]) and torch.equal(past_end[0, 1000:], torch.zeros(3320))
    assert apply_trim_window(x[0], TrimWindow(5, 0, 7)).shape == (1, 7)


def test_trim_silence_end_to_end():
    y = torch.from_numpy(_tone_in_silence(32000, 10000, 20000))[None]
    out, (start, end), window = trim_silence(y)
    assert start >= 800 and window.pad_left == 0 and out.shape == (1, window.out_len)
    assert torch.equal(out[0], y[0, start - 800 : start - 800 + window.out_len])  # 800 samples of lead-in kept


def test_bad_inputs():
    with pytest.raises(InvalidInputError, match="mono"):
        nonsilent_span(np.zeros((2, 100), np.float32))
    with pytest.raises(InvalidInputError, match="no samples"):
        nonsilent_span(np.zeros(0, np.float32))
