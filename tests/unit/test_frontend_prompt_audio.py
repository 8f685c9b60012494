"""Per-prompt chain: volume guard, tokenizer signal, CAM++ fbank and the whole preprocess_prompt."""
from __future__ import annotations

import math

import pytest
import torch

from editx.errors import InvalidInputError
from editx.frontend import campplus_fbank, peak_guard, preprocess_prompt, tokenizer_wav16


def _speechy(n: int, sr: int, peak: float = 0.9, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    t = torch.arange(n, dtype=torch.float64) / sr
    envelope = (torch.sin(2 * math.pi * 2.0 * t).clamp(min=0) ** 2)  # bursts with silence between
    x = envelope * (torch.sin(2 * math.pi * 180.0 * t) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64))
    x = (x / x.abs().max() * peak).float()
    return x.repeat(channels, 1)


def test_peak_guard_scales_only_above_limit():
    loud = torch.tensor([[0.1, -0.9, 0.3]])
    out, peak = peak_guard(loud)
    assert peak == pytest.approx(0.9) and out.abs().max().item() == pytest.approx(0.6, abs=1e-7)
    quiet = torch.tensor([[0.1, -0.5, 0.3]])
    same, peak = peak_guard(quiet)
    assert same is quiet and peak == pytest.approx(0.5)


def test_tokenizer_wav16_rate_check_and_peak():
    with pytest.raises(InvalidInputError, match="8000 Hz"):
        tokenizer_wav16(torch.zeros(1, 8000), 8000)
    x = _speechy(24001, 24000, peak=0.6)
    y = tokenizer_wav16(x, 24000)
    assert y.shape == (1, 16001) and y.abs().max().item() == pytest.approx(0.999, abs=1e-6)
    same_rate = tokenizer_wav16(x[:, :16000], 16000)
    assert torch.equal(same_rate, x[:, :16000] / x[:, :16000].abs().max() * 0.999)
    tiny = torch.full((1, 100), 0.001)
    assert torch.allclose(tokenizer_wav16(tiny, 16000), tiny / 0.01 * 0.999)  # floor at 0.01


def test_campplus_fbank_is_mean_free():
    feats = campplus_fbank(_speechy(44100, 44100), 44100)
    assert feats.shape == (1, 1 + (16000 - 400) // 160, 80) and feats.dtype == torch.float32
    assert feats.mean(dim=1).abs().max() < 1e-4


@pytest.mark.parametrize("sr,n", [(44100, 44101), (24000, 30001), (16000, 20003)])
def test_preprocess_prompt_shapes(sr, n):
    wav = _speechy(n, sr, peak=0.95, channels=2)
    p = preprocess_prompt(wav, sr)
    n24 = math.ceil(n * 24000 / sr)
    n16 = math.ceil(n * 16000 / sr)
    assert p.wav.shape == (1, n) and p.wav.abs().max().item() == pytest.approx(0.6, abs=1e-6)
    assert p.peak_before_guard == pytest.approx(0.95, abs=1e-6)
    assert p.speech_feat.shape == (1, n24 // 480, 80)
    assert p.campplus_fbank.shape == (1, 1 + (n16 - 400) // 160, 80)
    assert p.wav16_norm.shape == (1, n16)
    start, end = p.trim_index
    assert 0 <= start < end <= n16
    assert p.wav16_trimmed.shape == (1, p.trim_window.out_len)
    for t in (p.speech_feat, p.campplus_fbank, p.wav16_norm, p.wav16_trimmed):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_preprocess_prompt_rejects_bad_audio():
    with pytest.raises(InvalidInputError, match="8000 Hz"):
        preprocess_prompt(_speechy(8000, 8000), 8000)
    bad = _speechy(16000, 16000)
    bad[0, 5] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        preprocess_prompt(bad, 16000)
    with pytest.raises(InvalidInputError, match="no samples"):
        preprocess_prompt(torch.zeros(1, 0), 16000)
