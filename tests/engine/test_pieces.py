"""Long text spoken as consecutive requests (`split=True`): one stream equal to the pieces' own
streams, gapless numbering, summed usage, asyncio twin, cancellation of running and prefetched pieces."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from audio_compare import assert_same_result
from engine_testing import make_runtime, wait_idle

import editx.api as api
from editx import InvalidInputError
from editx.frontend.text_split import split_text

TEXT = ("The first sentence is here. A second one follows it! And then a third, which runs longer than the "
        "others. Short fourth.")
PIECE_CHARS = 40  # the module default (300) would need a text too long for a quick CPU test


@pytest.fixture(scope="module")
def rt():
    """One runtime with the default decoder worker: the pieces are plain requests to the engine, whose
    inline mode the other engine tests cover (this keeps CI time down)."""
    runtime = make_runtime(seed=0)
    yield runtime
    runtime.close()


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(api, "SPLIT_PIECE_CHARS", PIECE_CHARS)
    return split_text(TEXT, PIECE_CHARS)


def params(rt):
    return rt.default_sampling(max_new_tokens=30)


def pieces_one_by_one(rt, voice, pieces, seed):
    """Each piece as its own request, piece k seeded seed + k (the documented contract)."""
    return [list(rt.stream_clone(voice, "A prompt.", piece, seed=seed + k, sampling=params(rt)))
            for k, piece in enumerate(pieces)]


def test_split_stream_is_the_pieces_streams_joined(rt, voices, small_pieces):
    assert len(small_pieces) >= 3
    stream = rt.stream_clone(voices[0], "A prompt.", TEXT, seed=5, sampling=params(rt), split=True)
    chunks = list(stream)
    parts = pieces_one_by_one(rt, voices[0], small_pieces, 5)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert_same_result(np.concatenate([c.samples for c in chunks]),
                       np.concatenate([c.samples for part in parts for c in part]))
    usage = chunks[-1].usage
    assert usage.prompt_tokens == sum(part[-1].usage.prompt_tokens for part in parts)
    assert usage.generated_tokens == sum(part[-1].usage.generated_tokens for part in parts)
    cut = any(part[-1].usage.stop_reason == "length" for part in parts)
    assert usage.stop_reason == ("length" if cut else "stop_id")
    assert len(stream.requests) == len(small_pieces)


def test_asyncio_split_equals_the_blocking_one(rt, voices, small_pieces):
    blocking = list(rt.stream_clone(voices[1], "A prompt.", TEXT, seed=2, sampling=params(rt), split=True))

    async def consume():
        return [c async for c in rt.astream_clone(voices[1], "A prompt.", TEXT, seed=2, sampling=params(rt),
                                                  split=True)]

    streamed = asyncio.run(consume())
    assert [c.index for c in streamed] == [c.index for c in blocking]
    assert_same_result(np.concatenate([c.samples for c in streamed]), np.concatenate([c.samples for c in blocking]))
    assert streamed[-1].usage == blocking[-1].usage


def test_clone_split_collects_the_stream_and_the_offline_path_joins_offline_pieces(rt, voices, small_pieces):
    streamed = rt.clone(voices[0], "A prompt.", TEXT, seed=3, sampling=params(rt), split=True)
    chunks = list(rt.stream_clone(voices[0], "A prompt.", TEXT, seed=3, sampling=params(rt), split=True))
    assert_same_result(streamed.samples, np.concatenate([c.samples for c in chunks]))
    assert streamed.info["pieces"] == len(small_pieces)
    assert streamed.info["generated_tokens"] == chunks[-1].usage.generated_tokens
    two = "First short sentence here. Second short one follows."  # two pieces: upstream's offline path is slow
    offline = rt.clone(voices[0], "A prompt.", two, seed=3, sampling=params(rt), split=True, stream=False)
    pieces = [rt.clone(voices[0], "A prompt.", piece, seed=3 + k, sampling=params(rt), stream=False)
              for k, piece in enumerate(split_text(two, PIECE_CHARS))]
    assert np.array_equal(offline.samples, np.concatenate([p.samples for p in pieces]))
    assert offline.info["pieces"] == len(pieces) == 2 and offline.text == two
    assert offline.info["generated_tokens"] == sum(p.info["generated_tokens"] for p in pieces)


def test_closing_a_split_stream_cancels_the_running_and_the_prefetched_piece(rt, voices, small_pieces):
    stream = rt.stream_clone(voices[2], "A prompt.", TEXT, seed=9, sampling=rt.default_sampling(max_new_tokens=400),
                             split=True)
    next(stream)  # piece 0's first chunk: piece 1 is submitted now
    assert len(stream.requests) == 2
    stream.close()
    stats = wait_idle(rt)
    assert stats["used_blocks"] == 0 and all(r.state == "cancelled" for r in stream.requests)
    assert list(stream) == []


def test_split_limits_and_the_hint_without_it(rt, voices):
    with pytest.raises(InvalidInputError, match="split=True"):
        rt.stream_clone(voices[0], "A prompt.", "word " * 1000, sampling=params(rt))
    with pytest.raises(InvalidInputError, match="too long even split"):
        rt.stream_clone(voices[0], "A prompt.", "a. " * 40_000, sampling=params(rt), split=True)
    with pytest.raises(InvalidInputError, match="text"):
        rt.stream_clone(voices[0], "A prompt.", "   ", sampling=params(rt), split=True)


def test_a_piece_that_cannot_start_fails_the_stream_and_cancels_the_running_one(rt, voices, small_pieces,
                                                                                monkeypatch):
    """E.g. a later piece whose prompt leaves no room under max_length: the error reaches the reader at
    once, the running piece is cancelled, nothing leaks."""
    real_job = rt._clone_job

    def failing(prompt_audio, prompt_text, text, seed, sampling):
        if text == small_pieces[1]:
            raise InvalidInputError("text/prompt too long: injected for piece 1")
        return real_job(prompt_audio, prompt_text, text, seed, sampling)

    monkeypatch.setattr(rt, "_clone_job", failing)
    stream = rt.stream_clone(voices[0], "A prompt.", TEXT, seed=1, sampling=rt.default_sampling(max_new_tokens=400),
                             split=True)
    with pytest.raises(InvalidInputError, match="injected for piece 1"):
        next(stream)
    assert stream.requests[0].cancel_event.is_set()
    assert wait_idle(rt)["used_blocks"] == 0
