"""`encode_voice`: its three chains (vq02, vq06, decoder conditioning) run concurrently by default and give
exactly what they give one after another; a failing chain fails the call."""
from __future__ import annotations

import dataclasses
import threading

import pytest
import soundfile as sf
import torch

import speech_clips
from editx import Runtime
from editx.engine.voice import encode_voice
from editx.errors import InvalidInputError


@pytest.fixture(scope="module")
def comps():
    rt = Runtime.from_pretrained("dummy:tiny")
    yield rt.components
    rt.close()


@pytest.fixture(scope="module")
def clip():
    samples, sr = sf.read(str(speech_clips.require()), dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()), sr


def _encode(comps, clip, parallel: bool):
    wav, sr = clip
    # dither on, from a seeded generator: the vq02 chain's draws must not depend on the threads
    return encode_voice(comps, wav, sr, dither=1.0, generator=torch.Generator().manual_seed(3), parallel=parallel)


def test_concurrent_chains_give_exactly_the_serial_result(comps, clip):
    serial, parallel = _encode(comps, clip, False), _encode(comps, clip, True)
    assert parallel.vq02 == serial.vq02 and parallel.vq06 == serial.vq06
    assert parallel.llm_audio_ids == serial.llm_audio_ids and parallel.token_str == serial.token_str
    for field in dataclasses.fields(serial.conditioning):
        ours, theirs = getattr(parallel.conditioning, field.name), getattr(serial.conditioning, field.name)
        assert torch.equal(ours, theirs) if isinstance(ours, torch.Tensor) else ours == theirs, field.name
    assert set(parallel.timings) == {"preprocess_s", "vq02_s", "vq06_s", "conditioning_s", "total_s"}


def test_vq06_and_conditioning_run_at_the_same_time(comps, clip):
    """Both pool chains wait at one barrier: run one after another, the first would time out there."""
    barrier = threading.Barrier(2, timeout=20)
    threads = {}

    def meeting(name, fn):
        def run(*args):
            threads[name] = threading.current_thread().name
            barrier.wait()
            return fn(*args)
        return run

    both = dataclasses.replace(comps, vq06=meeting("vq06", comps.vq06), speaker=meeting("speaker", comps.speaker))
    _encode(both, clip, True)
    assert all(name.startswith("editx-frontend") for name in threads.values()), threads
    assert threads["vq06"] != threads["speaker"]


def test_serial_mode_stays_on_the_calling_thread(comps, clip):
    seen = []

    def vq06(wav):
        seen.append(threading.current_thread())
        return comps.vq06(wav)

    _encode(dataclasses.replace(comps, vq06=vq06), clip, False)
    assert seen == [threading.current_thread()]


@pytest.mark.parametrize("parallel", [False, True])
def test_a_failing_chain_fails_the_call_with_its_error(comps, clip, parallel):
    def broken_speaker(fbank):
        raise InvalidInputError("speaker encoder: broken on purpose")

    with pytest.raises(InvalidInputError, match="broken on purpose"):
        _encode(dataclasses.replace(comps, speaker=broken_speaker), clip, parallel)
