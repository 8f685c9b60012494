"""Bad input gets a clear error naming the problem (one test each), and never poisons the runtime."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from editx import (AudioFormatError, BackendUnavailableError, CheckpointError, InvalidInputError, Runtime,
                   RuntimeConfig)


def _wav_bytes(samples: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _speechlike(sr: int, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_sample_rate_below_16k(rt, sampling):
    with pytest.raises(InvalidInputError, match="8000"):
        rt.clone(_wav_bytes(_speechlike(8000), 8000), "A prompt.", "Text.", sampling=sampling)


def test_empty_text(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="text"):
        rt.clone(prompt_wav, "A prompt.", "   ", sampling=sampling)


def test_empty_prompt_text(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="prompt_text"):
        rt.clone(prompt_wav, "", "Text.", sampling=sampling)


def test_too_long_text(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="too long"):
        rt.clone(prompt_wav, "A prompt.", "word " * 2000, sampling=sampling)


def test_text_that_overflows_max_length(prompt_wav):
    rt = Runtime.from_pretrained("dummy:tiny", max_length=400)
    with pytest.raises(InvalidInputError, match="max_length"):
        rt.clone(prompt_wav, "A prompt.", "This sentence is long enough. " * 30)


def test_corrupt_audio(rt, sampling):
    with pytest.raises(AudioFormatError):
        rt.clone(b"RIFF\x00\x00garbage-not-audio" * 10, "A prompt.", "Text.", sampling=sampling)


def test_missing_audio_file(rt, sampling, tmp_path):
    with pytest.raises(AudioFormatError, match="no_such.wav"):
        rt.clone(tmp_path / "no_such.wav", "A prompt.", "Text.", sampling=sampling)


def test_empty_audio(rt, sampling):
    with pytest.raises(AudioFormatError):
        rt.clone(_wav_bytes(np.zeros(0, np.float32), 16000), "A prompt.", "Text.", sampling=sampling)


def test_nan_audio(rt, sampling):
    samples = _speechlike(16000)
    samples[100] = np.nan
    with pytest.raises(AudioFormatError, match="NaN"):
        rt.clone((samples, 16000), "A prompt.", "Text.", sampling=sampling)


def test_silent_audio(rt, sampling):
    with pytest.raises(InvalidInputError):
        rt.clone((np.zeros(16000, np.float32), 16000), "A prompt.", "Text.", sampling=sampling)


def test_unknown_edit_type(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="edit_type"):
        rt.edit(prompt_wav, "Some text.", "pitch", "higher", sampling=sampling)


def test_unknown_edit_info(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="edit_info"):
        rt.edit(prompt_wav, "Some text.", "emotion", "joyful", sampling=sampling)


def test_paralinguistic_without_text(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="text"):
        rt.edit(prompt_wav, "Some text.", "paralinguistic", sampling=sampling)


def test_bad_n_iter(rt, sampling, prompt_wav):
    with pytest.raises(InvalidInputError, match="n_iter"):
        rt.edit(prompt_wav, "Some text.", "emotion", "happy", n_iter=0, sampling=sampling)


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Runtime.from_pretrained(tmp_path / "nowhere")


def test_unknown_preset():
    with pytest.raises(InvalidInputError, match="dummy:small"):
        Runtime.from_pretrained("dummy:small")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        Runtime.from_pretrained("dummy:tiny", device="cuda")


def test_fp16_on_cpu_rejected():
    with pytest.raises(InvalidInputError, match="float16"):
        RuntimeConfig(dtype="float16")


def test_bad_dtype_name():
    with pytest.raises(InvalidInputError, match="dtype"):
        RuntimeConfig(dtype="int8")


@pytest.mark.parametrize("name", ["overlap_decoder", "batch_decoder", "cuda_graphs", "stream"])
def test_switches_take_booleans_only(name):
    with pytest.raises(InvalidInputError, match=f"{name}: expected True or False"):
        RuntimeConfig(**{name: "no"})
    assert getattr(RuntimeConfig(**{name: False}), name) is False


@pytest.mark.parametrize("bad", [(15, 25), (0,), (), "6,x", 6, (3, 3003)])
def test_stream_chunk_frames_must_be_multiples_of_three(bad):
    with pytest.raises(InvalidInputError, match="stream_chunk_frames"):
        RuntimeConfig(stream_chunk_frames=bad)
    assert RuntimeConfig(stream_chunk_frames="6, 24,48").stream_chunk_frames == (6, 24, 48)


@pytest.mark.parametrize("name,bad", [("decoder_slots", -1), ("decoder_slots", True), ("decoder_slots", 2.5),
                                      ("decoder_slot_prompt_frames", 0)])
def test_decoder_slot_sizes_are_checked(name, bad):
    with pytest.raises(InvalidInputError, match=name):
        RuntimeConfig(**{name: bad})
    assert RuntimeConfig().decoder_slots is None  # auto: 16 on CUDA (memory permitting), none on CPU


def test_failed_request_leaves_runtime_intact(rt, sampling, prompt_wav):
    before = rt.clone(prompt_wav, "A prompt.", "Text.", seed=9, sampling=sampling)
    for bad in (lambda: rt.clone(b"junk", "A prompt.", "Text.", sampling=sampling),
                lambda: rt.edit(prompt_wav, "x", "emotion", "nope", sampling=sampling)):
        with pytest.raises(InvalidInputError):
            bad()
    after = rt.clone(prompt_wav, "A prompt.", "Text.", seed=9, sampling=sampling)
    assert np.array_equal(before.samples, after.samples)
