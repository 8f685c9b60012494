"""Parity of the HiFT vocoder (editx.models.hift) with upstream, on every matching fixture case.

Covers hift_f0, hift_source, hift_decode, hift_inference, the vocoder half of
token2wav_nonstream (teacher-forced decode and free-running inference from the stored
flow mel) and the streaming vocoder of token2wav_stream (fed the stored per-chunk flow
mels and NSF draws). Everything (weights, lengths, tolerances) comes from the manifest.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from editx.models.hift import HiFTGenerator, HiFTStreamState, load_hift
from fixture_sets import assert_matches, cases_where, named

# README §5.7: decode(mel, hift_source) reproduces upstream's speech to < 1e-6 (the case's
# note says < 1e-4), far tighter than the free-running speech tolerance.
TEACHER_FORCED_ATOL = 1e-4


@lru_cache(maxsize=4)
def _model(weights: str) -> HiFTGenerator:
    return load_hift(weights)


def model_for(case) -> HiFTGenerator:
    return _model(str(case.weights("weights/cosyvoice/hift.pt")))


def draws_of(case):
    return case.input("nsf_rand_ini"), case.input("nsf_sine_noise")


@pytest.mark.parametrize("case", cases_where(named("hift_f0")))
def test_hift_f0(case):
    f0 = model_for(case).f0(case.input("mel"))
    assert_matches(f0, case.output("f0"), case.tolerance("f0"), f"{case.id} f0")


@pytest.mark.parametrize("case", cases_where(named("hift_source")))
def test_hift_source(case):
    with torch.no_grad():
        source = model_for(case).source(case.input("f0"), *draws_of(case))
    assert_matches(source, case.output("source"), case.tolerance("source"), f"{case.id} source")


@pytest.mark.parametrize("case", cases_where(named("hift_decode")))
def test_hift_decode(case):
    with torch.no_grad():
        speech = model_for(case).decode(case.input("mel"), case.input("source"))
    assert_matches(speech, case.output("speech"), case.tolerance("speech"), f"{case.id} speech")


@pytest.mark.parametrize("case", cases_where(named("hift_inference")))
def test_hift_inference(case):
    speech, source, f0 = model_for(case).inference(case.input("mel"), draws=draws_of(case), return_f0=True)
    got = {"speech": speech, "source": source, "f0": f0}
    for name in case.output_names():
        assert_matches(got[name], case.output(name), case.tolerance(name), f"{case.id} {name}")


@pytest.mark.parametrize("case", cases_where(named("token2wav_nonstream")))
def test_token2wav_nonstream_vocoder_teacher_forced(case):
    model = model_for(case)
    with torch.no_grad():
        speech = model.decode(case.output("mel"), case.output("hift_source"))
    speech_tol = case.tolerance("speech")
    # Tighter than (never looser than) the case's free-running speech tolerance.
    tol = {"atol": min(float(speech_tol.get("atol", TEACHER_FORCED_ATOL)), TEACHER_FORCED_ATOL),
           "rtol": float(speech_tol.get("rtol", 0.0))}
    assert_matches(speech, case.output("speech"), tol, f"{case.id} decode(mel, hift_source)")


@pytest.mark.parametrize("case", cases_where(named("token2wav_nonstream")))
def test_token2wav_nonstream_vocoder_free_running(case):
    """HiFT inference on upstream's flow mel with the case's NSF draws → hift_source and speech."""
    speech, source = model_for(case).inference(case.output("mel"), draws=draws_of(case))
    assert_matches(source, case.output("hift_source"), case.tolerance("hift_source"), f"{case.id} hift_source")
    assert_matches(speech, case.output("speech"), case.tolerance("speech"), f"{case.id} speech")


@pytest.mark.parametrize("case", cases_where(named("token2wav_stream")))
def test_token2wav_stream_vocoder(case):
    """Stream the stored flow mel chunks through vocode_chunk with the stored per-call NSF draws."""
    model = model_for(case)
    mel_lengths = case.output("flow_mel_chunk_lengths").tolist()
    call_lengths = case.input("nsf_call_lengths").tolist()
    mel_chunks = torch.split(case.output("flow_mel_chunks"), mel_lengths, dim=2)
    sine_noise = torch.split(case.input("nsf_sine_noise"), call_lengths, dim=1)
    rand_ini = case.input("nsf_rand_ini")
    assert len(mel_chunks) == len(sine_noise) == rand_ini.shape[0], "one HiFT call per emitted chunk"

    state = HiFTStreamState(mel_cache_len=int(case.params.get("mel_cache_len", 8)))
    audio, sources = [], []
    for k, (mel, noise) in enumerate(zip(mel_chunks, sine_noise)):
        last = k == len(mel_chunks) - 1
        out, state, source = model.vocode_chunk(mel, state, last=last, draws=(rand_ini[k: k + 1], noise),
                                                return_source=True)
        audio.append(out)
        sources.append(source)
    assert state.finished

    chunk_lengths = torch.tensor([a.shape[1] for a in audio], dtype=torch.int64)
    assert_matches(chunk_lengths, case.output("chunk_lengths"), case.tolerance("chunk_lengths"),
                   f"{case.id} chunk_lengths")
    assert_matches(torch.cat(sources, dim=2), case.output("hift_sources"), case.tolerance("hift_sources"),
                   f"{case.id} hift_sources")
    assert_matches(torch.cat(audio, dim=1), case.output("audio"), case.tolerance("audio"), f"{case.id} audio")
