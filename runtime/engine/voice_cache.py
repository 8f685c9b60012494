"""LRU cache of front-end results per voice (prompt recording), bounded in bytes.

A second request with the same prompt audio skips the whole front end (vq02 + vq06 codes,
prompt mel, CAM++ x-vector): ~0.1 s on CPU for `dummy:tiny`, far more with the real
50-layer Paraformer. The key is a content hash of the decoded samples and sample rate
(plus whatever config changes the result), so a re-encoded copy of the same audio hits too.
Entries are immutable `VoicePrompt`s, shared read-only by every request of that voice.

Concurrent misses for one voice compute it once ("single flight"): the first caller runs the
front end, the others wait for its result (or its error). Measured on an H200 with dummy:full,
16 simultaneous cold requests for one voice each ran the front end and the contention pushed
their first audio to 20 s (vs 1.4 s cached; benchmarks/results/stream_cuda_dummy_full_h200.json).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Optional

import torch

from .voice import VoicePrompt


def audio_key(wav: torch.Tensor, sample_rate: int, *salt: object) -> str:
    """sha256 over the float32 samples, their shape, the rate and `salt` (config that changes the result)."""
    h = hashlib.sha256()
    data = wav.detach().to("cpu", torch.float32).contiguous()
    h.update(repr((tuple(data.shape), int(sample_rate), salt)).encode())
    h.update(data.numpy().tobytes())
    return h.hexdigest()


def voice_nbytes(voice: VoicePrompt) -> int:
    """Approximate memory held by one cached voice (tensors + code lists)."""
    cond = voice.conditioning
    tensors = sum(t.numel() * t.element_size() for t in (cond.prompt_mixed, cond.prompt_feat, cond.embedding))
    return tensors + 8 * (len(voice.vq02) + len(voice.vq06) + len(voice.llm_audio_ids)) + len(voice.token_str)


class _Flight:
    """One in-progress computation that concurrent callers of the same key wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.voice: Optional[VoicePrompt] = None
        self.error: Optional[BaseException] = None


class VoiceCache:
    """Thread-safe LRU of VoicePrompts with a byte budget (0 disables caching)."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, tuple[VoicePrompt, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self.hits = 0
        self.misses = 0
        self.joined = 0  # misses that waited for another caller's computation instead of computing

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get_or_compute(self, key: str, compute: Callable[[], VoicePrompt]) -> tuple[VoicePrompt, bool]:
        """The cached voice for `key` (hit=True), or `compute()` stored under it (hit=False).

        `compute` runs outside the lock, so misses for different voices do not serialise;
        concurrent misses for the same voice run it once and share the result (hit=True for the
        callers that waited) or re-raise its error.
        """
        with self._lock:
            cached = self._lookup(key)
            if cached is not None:
                return cached, True
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            else:
                self.joined += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.voice, True
        try:
            flight.voice = compute()
            self.put(key, flight.voice)
            return flight.voice, False
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def get(self, key: str) -> Optional[VoicePrompt]:
        with self._lock:
            return self._lookup(key)

    def _lookup(self, key: str) -> Optional[VoicePrompt]:
        """`get` under the held lock (counts the hit or miss)."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: str, voice: VoicePrompt) -> None:
        size = voice_nbytes(voice)
        with self._lock:
            if size > self.max_bytes:
                return
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (voice, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def discard(self, key: str) -> bool:
        """Drop one voice's cached front-end results; whether it was there."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self._bytes -= item[1]
            return item is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
