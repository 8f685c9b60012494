"""VoiceCache: LRU order, byte bound, content keys."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from editx.engine.token2wav import VoiceConditioning
from editx.engine.voice import VoicePrompt
from editx.engine.voice_cache import VoiceCache, audio_key, voice_nbytes


def _voice(frames: int) -> VoicePrompt:
    cond = VoiceConditioning.from_features(list(range(10)), torch.zeros(1, frames, 80), torch.zeros(1, 192))
    return VoicePrompt([1, 2], [3, 4, 5], [65537] * 5, "<audio_1>", cond)


def test_lru_evicts_oldest_within_byte_budget():
    one = voice_nbytes(_voice(100))
    cache = VoiceCache(max_bytes=2 * one + one // 2)
    for key in "abc":
        cache.put(key, _voice(100))
    assert len(cache) == 2 and cache.get("a") is None  # "a" was least recently used
    cache.get("b")                                      # touch b, so c is now the oldest
    cache.put("d", _voice(100))
    assert cache.get("c") is None and cache.get("b") is not None and cache.nbytes <= cache.max_bytes


def test_zero_budget_disables_and_oversized_entries_are_skipped():
    cache = VoiceCache(max_bytes=0)
    v, hit = cache.get_or_compute("k", lambda: _voice(10))
    assert not hit and len(cache) == 0
    v2, hit2 = cache.get_or_compute("k", lambda: _voice(10))
    assert not hit2 and v2 is not v


def test_get_or_compute_hits_after_first_call():
    cache = VoiceCache()
    calls = []
    compute = lambda: calls.append(1) or _voice(5)  # noqa: E731
    a, hit_a = cache.get_or_compute("x", compute)
    b, hit_b = cache.get_or_compute("x", compute)
    assert (hit_a, hit_b) == (False, True) and a is b and len(calls) == 1


def _race(cache: VoiceCache, key: str, compute, n: int) -> list:
    """n threads call get_or_compute(key) at once; returns each one's (voice, hit) or exception."""
    results: list = [None] * n
    go = threading.Barrier(n)

    def worker(i: int) -> None:
        go.wait()
        try:
            results[i] = cache.get_or_compute(key, compute)
        except Exception as exc:  # collected, asserted by the caller
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_misses_for_one_voice_compute_it_once():
    cache = VoiceCache()
    calls = []

    def slow():
        calls.append(1)
        deadline = time.monotonic() + 10
        while cache.joined < 5 and time.monotonic() < deadline:  # every other caller is now waiting
            time.sleep(0.01)
        return _voice(7)

    results = _race(cache, "v", slow, 6)
    assert len(calls) == 1
    voices = {id(v) for v, _ in results}
    assert len(voices) == 1 and sorted(hit for _, hit in results) == [False] + [True] * 5
    assert cache.joined == 5 and len(cache) == 1


def test_a_failed_computation_fails_its_waiters_and_is_not_cached():
    cache = VoiceCache()

    def broken():
        deadline = time.monotonic() + 10
        while cache.joined < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError("corrupt prompt audio")

    results = _race(cache, "bad", broken, 4)
    assert all(isinstance(r, ValueError) for r in results)
    assert len(cache) == 0
    v, hit = cache.get_or_compute("bad", lambda: _voice(3))  # a later call computes afresh
    assert not hit and v is not None
    with pytest.raises(KeyError):  # no flight left behind
        cache._flights["bad"]


def test_audio_key_depends_on_samples_rate_and_salt():
    wav = torch.linspace(-0.5, 0.5, 1000)[None]
    base = audio_key(wav, 16000, "sinc")
    assert base == audio_key(wav.clone(), 16000, "sinc")
    assert base != audio_key(wav, 24000, "sinc")
    assert base != audio_key(wav, 16000, "soxr")
    nudged = wav.clone()
    nudged[0, 500] += 1e-6
    assert base != audio_key(nudged, 16000, "sinc")


def test_discard_drops_one_voice_and_its_bytes():
    cache = VoiceCache()
    cache.put("a", _voice(100))
    cache.put("b", _voice(50))
    assert cache.discard("a") and not cache.discard("a")
    assert cache.get("a") is None and cache.get("b") is not None and cache.nbytes == voice_nbytes(_voice(50))
