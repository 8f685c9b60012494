"""A randomized mix of what happens to a serving runtime at once — finished streams, streams closed
mid-way or before their first chunk, asyncio consumers, bad input, a decoder that breaks — on one
Runtime with the decoder worker, batched decoder chunks and a DiT slot pool smaller than the load.
Afterwards every survivor has the audio of its one-by-one run, every KV block and decoder slot is
back, and the runtime still serves a request exactly. Seeds pick the mix (two schedules). Also: streams
preempted when the KV pool runs out recompute and keep their audio."""
from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
import pytest

from audio_compare import assert_same_result
from engine_testing import make_runtime, wait_idle

from editx import InvalidInputError

TOKENS = 70  # set-up + two chunks on CPU in about a second
ACTIONS = ("finish", "finish", "async", "close_after_1", "close_before_first", "bad_text", "broken_decoder")


def run_one(rt, voice, text, seed, action, tokens=TOKENS):
    """Perform `action` on one request; returns its audio if it is expected to finish, else None."""
    params = rt.default_sampling(max_new_tokens=tokens)
    if action == "bad_text":
        with pytest.raises(InvalidInputError, match="text"):
            rt.stream_clone(voice, "A prompt.", " \n ", seed=seed, sampling=params)
        return None
    if action == "async":
        async def consume():
            return [c.samples async for c in rt.astream_clone(voice, "A prompt.", text, seed=seed, sampling=params)]
        return np.concatenate(asyncio.run(consume()))
    stream = rt.stream_clone(voice, "A prompt.", text, seed=seed, sampling=params)
    if action == "close_before_first":
        stream.close()
        return None
    if action == "close_after_1":
        next(stream)
        stream.close()
        return None
    if action == "broken_decoder":
        class Broken:  # any use inside the decoder raises, as a corrupt per-stream state would
            def __getattr__(self, name):
                raise RuntimeError("injected decoder failure")

        stream.request.t2w.voice = Broken()
        with pytest.raises(RuntimeError, match="injected"):
            list(stream)
        assert stream.request.state == "failed"
        return None
    chunks = list(stream)
    assert [c.is_last for c in chunks].count(True) == 1 and chunks[-1].is_last
    return np.concatenate([c.samples for c in chunks])


@pytest.mark.parametrize("schedule_seed", [3, 11])
def test_random_mix_of_requests_leaves_survivors_exact_and_nothing_leaked(voices, schedule_seed):
    rng = random.Random(schedule_seed)
    jobs = [(voices[rng.randrange(len(voices))], f"Sentence number {i} of the soak.", 100 + i,
             ACTIONS[rng.randrange(len(ACTIONS))]) for i in range(9)]
    jobs.append((voices[0], "One that always breaks.", 99, "broken_decoder"))
    jobs.append((voices[1], "One that always leaves early.", 98, "close_after_1"))
    with make_runtime(overlap_decoder=True, batch_decoder=True, decoder_slots=2) as rt:
        expected = {i: run_one(rt, v, t, s, "finish") for i, (v, t, s, a) in enumerate(jobs)
                    if a in ("finish", "async")}
        baseline = wait_idle(rt)
        slots = rt.decoder.slots.free_slots
        results, errors = {}, []

        def worker(i, job):
            voice, text, seed, action = job
            time.sleep(rng_delays[i])
            try:
                results[i] = run_one(rt, voice, text, seed, action)
            except BaseException as exc:  # reported below with the job that raised it
                errors.append((i, action, exc))

        rng_delays = [rng.uniform(0.0, 0.3) for _ in jobs]
        threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
        assert not any(th.is_alive() for th in threads), "a request never ended"
        assert not errors, errors
        for i, want in expected.items():
            assert_same_result(results[i], want)
        after = wait_idle(rt)
        assert (after["used_blocks"], after["free_blocks"]) == (0, baseline["free_blocks"])
        assert rt.decoder.slots.free_slots == slots
        # Nothing stale left behind: a new request is still exactly its one-by-one run.
        voice, text, seed, _ = jobs[0]
        again = run_one(rt, voice, text, seed, "finish")
    with make_runtime(overlap_decoder=True, batch_decoder=True, decoder_slots=2) as fresh:
        assert_same_result(again, run_one(fresh, voice, text, seed, "finish"))


def test_streams_preempted_for_kv_blocks_recompute_and_match_sequential(voices):
    """A KV pool that holds one of three concurrent requests at full length (max_length 640 -> 41 blocks of
    16 ids; prompts of 300-420 ids + 150 new): the scheduler preempts the most recent stream, which later
    recomputes its prompt and generated ids and carries on. Every stream still gets its one-by-one audio, and the pool
    is whole again afterwards."""
    with make_runtime(kv_cache_bytes=1, max_length=640, overlap_decoder=True) as rt:
        params = rt.default_sampling(max_new_tokens=150)
        jobs = [(voice, f"Text number {i}.", 20 + i) for i, voice in enumerate(voices)]
        expected = [run_one(rt, v, t, s, "finish", tokens=150) for v, t, s in jobs]
        assert rt.engine_stats()["preemptions"] == 0  # one at a time fits
        streams = [rt.stream_clone(v, "A prompt.", t, seed=s, sampling=params) for v, t, s in jobs]
        got = [np.concatenate([c.samples for c in stream]) for stream in streams]
        stats = wait_idle(rt)
        assert stats["preemptions"] > 0, "the pool was meant to be too small for all three"
        for a, b in zip(got, expected):
            assert_same_result(a, b)
        assert stats["free_blocks"] == stats["num_blocks"]  # cached prefix blocks count as free (evictable)
