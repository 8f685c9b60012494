"""The streaming Runtime: chunk protocol, concurrency = sequential, cancellation, failure isolation."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from editx import AudioChunk, InvalidInputError

from audio_compare import assert_same_result
from engine_testing import DEVICE, make_runtime, wait_idle

TOKENS = 90  # > 2 decoder chunks (setup 5, chunks of 25 and 40 ids, + 5 lookahead) yet quick on CPU


def params(rt, tokens=TOKENS):
    return rt.default_sampling(max_new_tokens=tokens)


def drain(stream) -> list[AudioChunk]:
    return list(stream)


def test_chunks_are_numbered_contiguous_and_end_once(rt, voices):
    stream = rt.stream_clone(voices[0], "A prompt.", "Some text.", seed=4, sampling=params(rt))
    chunks = drain(stream)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.sample_rate == 24000 and c.samples.dtype == np.float32 for c in chunks)
    if stream.request.stop_reason == "length":  # (a random-weight model may stop early)
        assert len(chunks) >= 3  # first chunk, 24-frame chunk, final


@pytest.mark.parametrize("tokens", [7, TOKENS])
def test_only_the_last_chunk_reports_usage(rt, voices, tokens):
    """Token counts and why generation stopped arrive with the last chunk (also through asyncio): the
    request's own prompt / generated ids, at most max_new_tokens, "length" exactly when that cut it."""
    stream = rt.stream_clone(voices[0], "A prompt.", "Some text.", seed=6, sampling=params(rt, tokens))
    chunks = drain(stream)
    assert all(c.usage is None for c in chunks[:-1])
    usage, req = chunks[-1].usage, stream.request
    assert (usage.prompt_tokens, usage.generated_tokens) == (len(req.prompt_ids), len(req.generated))
    assert 0 < usage.generated_tokens <= tokens
    stopped = req.generated[-1] == req.params.stop_id
    assert usage.stop_reason == ("stop_id" if stopped else "length")
    assert stopped or usage.generated_tokens == tokens

    async def last_chunk():
        async for chunk in rt.astream_clone(voices[0], "A prompt.", "Some text.", seed=6, sampling=params(rt, tokens)):
            if chunk.is_last:
                return chunk

    assert asyncio.run(last_chunk()).usage == usage


def test_stream_equals_the_streaming_decoder_on_the_same_tokens(rt, voices):
    """Engine-driven chunks (any scheduling) == Token2WavStream fed the same ids one per call:
    no gap, no duplicated sample at chunk boundaries."""
    stream = rt.stream_clone(voices[1], "A prompt.", "Other text.", seed=8, sampling=params(rt))
    got = np.concatenate([c.samples for c in drain(stream)])
    req = stream.request
    kept = [t - 65536 for t in req.generated[:-1]]
    voice = rt.encode_voice(voices[1])
    gen = torch.Generator(device=rt.config.device).manual_seed(req.params.seed + 1)
    ref = rt.decoder.stream(voice.conditioning, generator=gen)
    expected = [c for i, t in enumerate(kept) for c in ref.push([t], last=i == len(kept) - 1)]
    assert_equal_on_cpu(got, torch.cat(expected).cpu().numpy())


def test_collected_clone_is_the_concatenated_stream(rt, voices):
    chunks = drain(rt.stream_clone(voices[0], "A prompt.", "Text.", seed=2, sampling=params(rt)))
    audio = rt.clone(voices[0], "A prompt.", "Text.", seed=2, sampling=params(rt))
    assert np.array_equal(audio.samples, np.concatenate([c.samples for c in chunks]))


def assert_equal_on_cpu(got, want):
    """Bit-identical on CPU. On CUDA the same math in a different batch/call shape may take
    another cuBLAS/Triton algorithm (different rounding), so there it is `assert_same_result`."""
    if DEVICE == "cpu":
        assert np.array_equal(got, want)
    else:
        assert_same_result(got, want)


def _sequential(rt, jobs):
    return [np.concatenate([c.samples for c in drain(rt.stream_clone(v, "A prompt.", t, seed=s,
                                                                      sampling=params(rt)))])
            for v, t, s in jobs]


def _jobs(voices):
    return [(voices[i % len(voices)], text, seed) for i, (text, seed) in
            enumerate([("Hello there.", 1), ("Another sentence here.", 2), ("Short.", 3), ("Hi.", 4)])]


def test_threads_equal_sequential(rt, voices):
    jobs = _jobs(voices)
    expected = _sequential(rt, jobs)
    results = [None] * len(jobs)

    def worker(i, v, t, s):
        results[i] = np.concatenate([c.samples for c in drain(rt.stream_clone(v, "A prompt.", t, seed=s,
                                                                                sampling=params(rt)))])

    threads = [threading.Thread(target=worker, args=(i, *job)) for i, job in enumerate(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    for got, want in zip(results, expected):
        assert_same_result(got, want)


def test_asyncio_equals_sequential(rt, voices):
    jobs = _jobs(voices)[:3]
    expected = _sequential(rt, jobs)

    async def one(v, t, s):
        return np.concatenate([c.samples async for c in rt.astream_clone(v, "A prompt.", t, seed=s,
                                                                         sampling=params(rt))])

    async def main():
        return await asyncio.gather(*(one(*job) for job in jobs))

    for got, want in zip(asyncio.run(main()), expected):
        assert_same_result(got, want)


@pytest.mark.parametrize("overlap", [False, True], ids=["inline-decoder", "overlapped-decoder"])
def test_unbatched_decoder_is_bit_identical_to_sequential(voices, overlap):
    """With batch_decoder=False nothing is batched across streams but the LLM rows: concurrent
    requests then give bit-identical audio and tokens to one-by-one runs (decoder worker or not)."""
    with make_runtime(batch_decoder=False, overlap_decoder=overlap) as rt:
        jobs = _jobs(voices)[:3]
        expected = _sequential(rt, jobs)
        streams = [rt.stream_clone(v, "A prompt.", t, seed=s, sampling=params(rt)) for v, t, s in jobs]
        for stream, want in zip(streams, expected):
            assert_equal_on_cpu(np.concatenate([c.samples for c in drain(stream)]), want)


def test_cancel_mid_stream_frees_everything_and_spares_others(rt, voices):
    baseline = wait_idle(rt)
    other_expected = _sequential(rt, [(voices[2], "Keep going.", 7)])[0]
    other = rt.stream_clone(voices[2], "A prompt.", "Keep going.", seed=7, sampling=params(rt))
    doomed = rt.stream_clone(voices[0], "A prompt.", "Stop me.", seed=9, sampling=params(rt, 400))
    first = next(doomed)
    assert isinstance(first, AudioChunk)
    doomed.close()  # cancel mid-stream
    got = np.concatenate([c.samples for c in drain(other)])
    assert_same_result(got, other_expected)
    after = wait_idle(rt)
    assert after["used_blocks"] == baseline["used_blocks"] == 0
    assert after["free_blocks"] == baseline["free_blocks"]
    assert doomed.request.state == "cancelled"


def test_bad_request_fails_alone(rt, voices):
    good = rt.stream_clone(voices[0], "A prompt.", "Fine text.", seed=3, sampling=params(rt))
    with pytest.raises(InvalidInputError, match="text"):
        rt.stream_clone(voices[1], "A prompt.", "   ", seed=3, sampling=params(rt))
    with pytest.raises(InvalidInputError):
        rt.stream_clone(b"not audio at all", "A prompt.", "Text.", sampling=params(rt))
    chunks = drain(good)
    assert chunks[-1].is_last and sum(c.samples.size for c in chunks) > 0


def test_decoder_failure_fails_only_that_stream(rt, voices, monkeypatch):
    """An exception inside one stream's decoder (e.g. a corrupt state) ends that stream with the
    error; concurrent streams complete normally."""
    good = rt.stream_clone(voices[0], "A prompt.", "Fine.", seed=5, sampling=params(rt))
    bad = rt.stream_clone(voices[1], "A prompt.", "Broken.", seed=6, sampling=params(rt))

    class Broken:  # a corrupt voice: any use inside the decoder raises
        def __getattr__(self, name):
            raise RuntimeError("injected decoder failure")

    monkeypatch.setattr(bad.request.t2w, "voice", Broken())
    with pytest.raises(RuntimeError, match="injected"):
        drain(bad)
    assert drain(good)[-1].is_last
    assert bad.request.state == "failed"
    wait_idle(rt)


def test_stream_edit_streams_the_last_iteration(rt, voices):
    chunks = drain(rt.stream_edit(voices[0], "Some words.", "emotion", "sad", n_iter=2, seed=1,
                                  sampling=params(rt, 40)))
    whole = rt.edit(voices[0], "Some words.", "emotion", "sad", n_iter=2, seed=1, sampling=params(rt, 40))
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), whole[-1].samples)


def test_static_decode_buffers_give_the_same_tokens(rt, voices):
    """The decode-step graph path (static, bucket-padded buffers; eager here, replayed from a CUDA
    graph on GPU) produces exactly the eager engine's tokens for concurrent requests."""
    from editx.engine.engine import Engine

    jobs = [rt._clone_job(v, "A prompt.", t, s, params(rt, 40)) for v, t, s in _jobs(voices)[:3]]

    def run(decode_graphs, warm=False):
        engine = Engine(rt.components.llm, rt._streamer.sched_config, rt._streamer.logit_bias,
                        decode_graphs=decode_graphs)
        if warm:  # every bucket first, padded rows on the scratch block: must not change any token
            assert engine.warmup() == len(engine.graphs.buckets) == len(engine.graphs._static)
        reqs = [rt._streamer.request(job) for job in jobs]
        for r in reqs:
            engine.submit(r)
        for r in reqs:
            while r.out.get(timeout=300) is not None:
                pass
        engine.shutdown()
        used = sorted(engine.graphs._static) if engine.graphs is not None else []
        return [r.generated for r in reqs], used

    static_ids, buckets = run("static")
    eager_ids, _ = run("off")
    assert buckets, "no decode-only step went through the static buffers"
    assert static_ids == eager_ids
    assert run("static", warm=True)[0] == eager_ids
    if DEVICE == "cuda":  # the replayed CUDA graphs themselves, captured lazily and all up front
        graph_ids, graph_buckets = run("cuda")
        assert graph_buckets and graph_ids == eager_ids
        assert run("cuda", warm=True)[0] == eager_ids


@pytest.mark.parametrize("overlap", [False, True], ids=["inline-decoder", "overlapped-decoder"])
def test_close_ends_running_streams_with_an_error(voices, overlap):
    from editx import EditXError

    rt = make_runtime(overlap_decoder=overlap)
    stream = rt.stream_clone(voices[0], "A prompt.", "A long text.", seed=1,
                             sampling=rt.default_sampling(max_new_tokens=400))
    next(stream)
    rt.close()
    with pytest.raises(EditXError, match="closed"):
        for _ in stream:
            pass


def test_timeline_stamps_the_first_audio_path_in_order(rt, voices):
    """The TTFA breakdown the benchmarks report: every stamp present and in causal order."""
    stream = rt.stream_clone(voices[0], "A prompt.", "Some text here.", seed=11, sampling=params(rt))
    chunks = drain(stream)
    t = stream.request.timeline
    if not any(c.samples.size for c in chunks):
        pytest.skip("this random-weight request produced no audio")
    order = ["submitted", "first_token", "first_chunk_dispatched", "first_audio"]
    assert all(k in t for k in order), t
    assert [t[k] for k in order] == sorted(t[k] for k in order)
    stats = rt.engine_stats()
    assert stats["llm_busy_s"] > 0 and stats["decoder_busy_s"] > 0


@pytest.mark.parametrize("overlap", [False, True], ids=["inline-decoder", "overlapped-decoder"])
def test_llm_decodes_during_decoder_items_only_when_overlapped(voices, monkeypatch, overlap):
    """Slow every decoder item down by 0.3 s and count the ids the LLM adds meanwhile: inside the
    engine step it cannot add any; on the decoder worker it keeps decoding."""
    import editx.engine.decoder_worker as worker_module
    import editx.engine.engine as engine_module

    real = worker_module.run_tasks
    grown = []

    def slow(tasks, *args, **kwargs):
        before = [len(t.req.generated) for t in tasks]
        time.sleep(0.3)
        grown.extend(len(t.req.generated) - b for t, b in zip(tasks, before))
        return real(tasks, *args, **kwargs)

    monkeypatch.setattr(worker_module, "run_tasks", slow)
    monkeypatch.setattr(engine_module, "run_tasks", slow)
    with make_runtime(overlap_decoder=overlap) as rt:
        chunks = drain(rt.stream_clone(voices[0], "A prompt.", "Some longer text.", seed=3,
                                       sampling=params(rt)))
    assert chunks[-1].is_last and grown
    assert (max(grown) > 0) == overlap, grown


def test_an_abandoned_event_loop_cancels_only_its_stream(rt, voices):
    """An asyncio consumer whose loop is closed mid-stream (client gone, generator never closed):
    handing it the next chunk fails, which must end that request alone, not the engine's step."""
    other_expected = _sequential(rt, [(voices[2], "Keep going.", 7)])[0]
    loop = asyncio.new_event_loop()
    agen = rt.astream_clone(voices[0], "A prompt.", "Abandoned.", seed=9, sampling=params(rt, 400))
    loop.run_until_complete(agen.__anext__())
    other = rt.stream_clone(voices[2], "A prompt.", "Keep going.", seed=7, sampling=params(rt))
    loop.close()  # the engine's next put to that stream's sink raises "Event loop is closed"
    assert_same_result(np.concatenate([c.samples for c in drain(other)]), other_expected)
    after = wait_idle(rt)
    assert after["used_blocks"] == 0


@pytest.mark.parametrize("overlap", [False, True], ids=["inline-decoder", "overlapped-decoder"])
def test_decoder_slot_pool_streams_match_and_slots_come_back(voices, overlap):
    """With a 2-stream DiT slot pool (static-shape solves; CUDA graphs on a GPU), three concurrent
    streams (one of them beyond the pool: packed caches) and a cancelled one give the audio of a
    runtime without the pool, and every slot is free again once the engine is idle."""
    jobs = _jobs(voices)[:3]
    with make_runtime(decoder_slots=0) as plain:
        expected = _sequential(plain, jobs)
    with make_runtime(decoder_slots=2, overlap_decoder=overlap) as rt:
        rt.warmup()  # every pool bucket once (captured on CUDA): garbage in free slots is never seen
        stats = rt.engine_stats()
        assert stats["free_decoder_slots"] == 2 and stats["decoder_slot_solves"] > 0
        doomed = rt.stream_clone(voices[0], "A prompt.", "Stop me.", seed=9, sampling=params(rt, 400))
        next(doomed)
        doomed.close()
        streams = [rt.stream_clone(v, "A prompt.", t, seed=s, sampling=params(rt)) for v, t, s in jobs]
        for stream, want in zip(streams, expected):
            assert_same_result(np.concatenate([c.samples for c in drain(stream)]), want)
        wait_idle(rt)
        stats = rt.engine_stats()
        assert stats["free_decoder_slots"] == 2 and stats["decoder_slot_solves"] > 0
        if DEVICE == "cuda":
            assert stats["decoder_graphs"] > 0


def test_smaller_first_chunk_streams_sooner_and_matches_its_decoder(voices):
    """stream_chunk_frames=(6, 12): the first chunk needs 15 ids instead of 30, chunks follow that
    list, and the engine's output equals the streaming decoder fed the same ids with the same list."""
    with make_runtime(stream_chunk_frames=(6, 12)) as rt:
        assert rt.decoder.flow.cfg.chunk_sizes == (6, 12)
        stream = rt.stream_clone(voices[1], "A prompt.", "Other text.", seed=8, sampling=params(rt))
        chunks = drain(stream)
        req = stream.request
        kept = [t - 65536 for t in req.generated[:-1]]
        gen = torch.Generator(device=rt.config.device).manual_seed(req.params.seed + 1)
        ref = rt.decoder.stream(rt.encode_voice(voices[1]).conditioning, generator=gen)
        expected = [c for i, t in enumerate(kept) for c in ref.push([t], last=i == len(kept) - 1)]
        got = np.concatenate([c.samples for c in chunks])
        assert_equal_on_cpu(got, torch.cat(expected).cpu().numpy())
        if len(kept) >= 30:
            # 6 frames = 12 mel frames x 480 samples, less the 3,840 held back for the cross-fade
            assert chunks[0].samples.size == 12 * 480 - 3840
