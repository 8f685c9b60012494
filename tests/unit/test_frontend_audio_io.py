"""Audio decoding / writing: exact PCM scaling, sources, and every caller error as AudioFormatError."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from editx.errors import AudioFormatError, InvalidInputError
from editx.frontend import audio_from_array, load_audio, to_mono, write_wav


def _pcm16_bytes(samples: np.ndarray, sample_rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def test_pcm16_loads_as_int16_over_32768(tmp_path):
    ints = np.array([-32768, -12345, -1, 0, 1, 777, 32767], dtype=np.int16)
    path = tmp_path / "a.wav"
    sf.write(path, ints, 22050, subtype="PCM_16")
    wav, sr = load_audio(path)
    assert sr == 22050 and wav.shape == (1, ints.size) and wav.dtype == torch.float32
    assert torch.equal(wav[0], torch.from_numpy(ints.astype(np.float32) / 32768.0))


def test_sources_path_bytes_filelike_agree(tmp_path):
    data = (np.arange(1001) % 200 - 100).astype(np.int16)
    raw = _pcm16_bytes(data, 24000)
    path = tmp_path / "b.wav"
    path.write_bytes(raw)
    a, _ = load_audio(path)
    b, _ = load_audio(str(path))
    c, _ = load_audio(raw)
    d, _ = load_audio(io.BytesIO(raw))
    for other in (b, c, d):
        assert torch.equal(a, other)


def test_stereo_is_channels_first_and_to_mono_averages(tmp_path):
    left = np.linspace(-0.5, 0.5, 333, dtype=np.float32)
    right = np.full(333, 0.25, dtype=np.float32)
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wav, _ = load_audio(path)
    assert wav.shape == (2, 333)
    mono = to_mono(wav)
    assert mono.shape == (1, 333)
    assert torch.allclose(mono[0], torch.from_numpy((left + right) / 2), atol=1e-7)
    assert to_mono(wav[:1]) is not None and to_mono(wav[:1]).shape == (1, 333)
    assert to_mono(wav[0]).shape == (1, 333)


def test_write_wav_round_trip_is_pcm16(tmp_path):
    x = torch.tensor([0.0, 0.5, -0.5, 1000 / 32768, -1.0])
    path = tmp_path / "w.wav"
    write_wav(path, x, 24000)
    assert sf.info(str(path)).subtype == "PCM_16"
    wav, sr = load_audio(path)
    assert sr == 24000 and torch.equal(wav[0], x)


def test_missing_file(tmp_path):
    with pytest.raises(AudioFormatError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioFormatError, match="empty"):
        load_audio(path)
    with pytest.raises(AudioFormatError, match="empty"):
        load_audio(b"")


def test_corrupt_bytes():
    with pytest.raises(AudioFormatError, match="cannot decode"):
        load_audio(b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all")
    with pytest.raises(AudioFormatError, match="cannot decode"):
        load_audio(_pcm16_bytes(np.zeros(100, np.int16))[:30])


def test_wav_with_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioFormatError, match="no samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_samples_in_file(tmp_path, bad):
    data = np.zeros(64, dtype=np.float32)
    data[7] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioFormatError, match="NaN or Inf"):
        load_audio(path)


def test_audio_from_array_scaling_and_checks():
    wav, sr = audio_from_array(np.array([0, 16384, -32768], dtype=np.int16), 16000)
    assert sr == 16000 and torch.equal(wav, torch.tensor([[0.0, 0.5, -1.0]]))
    wav, _ = audio_from_array(np.array([128, 255, 0], dtype=np.uint8), 8000)
    assert torch.allclose(wav, torch.tensor([[0.0, 127 / 128, -1.0]]))
    wav, _ = audio_from_array(torch.ones(2, 10, dtype=torch.bfloat16), 16000)
    assert wav.dtype == torch.float32 and wav.shape == (2, 10)
    for rate in (0, -16000, 16000.5, "16000", True):
        with pytest.raises(AudioFormatError, match="sample rate"):
            audio_from_array(np.zeros(10, np.float32), rate)
    with pytest.raises(AudioFormatError, match="no samples"):
        audio_from_array(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioFormatError, match="NaN or Inf"):
        audio_from_array(np.array([0.0, np.nan]), 16000)
    with pytest.raises(AudioFormatError, match="channels first"):
        audio_from_array(np.zeros((1000, 2), np.float32), 16000)
    with pytest.raises(AudioFormatError, match="shape"):
        audio_from_array(np.zeros((1, 2, 3), np.float32), 16000)
    with pytest.raises(AudioFormatError, match="dtype"):
        audio_from_array(np.array(["a", "b"]), 16000)


def test_audio_format_error_is_an_invalid_input_error():
    assert issubclass(AudioFormatError, InvalidInputError) and issubclass(AudioFormatError, ValueError)


def test_write_wav_rejects_bad_input(tmp_path):
    with pytest.raises(InvalidInputError):
        write_wav(tmp_path / "x.wav", np.array([0.0, np.nan]), 16000)
    with pytest.raises(InvalidInputError):
        write_wav(tmp_path / "x.wav", np.zeros(0), 16000)
    with pytest.raises(InvalidInputError):
        write_wav(tmp_path / "x.wav", np.zeros(10), 0)
