"""Server-wide state beside the Runtime: admission control, the uploaded-voice registry, counters.

Nothing here belongs to one request: a request's own state stays in its stream (the engine's
`Request`). Everything is touched only from the server's event loop thread, except
`VoiceRegistry`, which a lock guards because uploads decode audio in worker threads.
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import EditXError, InvalidInputError
from .metrics import Histogram


class Overloaded(EditXError):
    """The server already holds its limit of requests in flight (HTTP 503, retry later)."""


class UnknownVoice(InvalidInputError):
    """A request names a voice_id the registry does not hold (HTTP 404)."""


@dataclass
class ServerConfig:
    """Limits of one server.

    max_requests: requests in flight (front end, queued in the engine, or streaming) before new
        ones get 503 + Retry-After; None = 4 x the engine's max_num_seqs (a queue four batches deep:
        beyond that a new stream would wait longer than any TTFA target anyway).
    max_body_bytes: largest request body (base64 audio grows 4/3: 64 MB ~ 48 MB of audio file).
    max_voice_bytes: decoded samples the voice registry keeps (LRU; 256 MB ~ 23 minutes at 48 kHz).
    retry_after_s: the Retry-After a 503 carries.
    api_key: if set, every /v1/ request must send `Authorization: Bearer <api_key>` (401 otherwise);
        /health stays open for load balancers.
    cors_origins: browser origins allowed to call the server (e.g. "https://app.example.com", or "*");
        empty = no CORS headers (same-origin and non-browser clients only).
    """

    max_requests: int | None = None
    max_body_bytes: int = 64 * 2**20
    max_voice_bytes: int = 256 * 2**20
    retry_after_s: int = 1
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_voice_bytes", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"ServerConfig.{name}: expected a positive int, got {value!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8
                                         or any(c.isspace() for c in self.api_key)):
            raise InvalidInputError("ServerConfig.api_key: expected a string of at least 8 characters without "
                                    "spaces")
        if isinstance(self.cors_origins, str) or not all(isinstance(o, str) and o for o in self.cors_origins):
            raise InvalidInputError(f"ServerConfig.cors_origins: expected a sequence of origins, got "
                                    f"{self.cors_origins!r}")
        self.cors_origins = tuple(self.cors_origins)
        if self.max_requests is not None and (isinstance(self.max_requests, bool)
                                              or not isinstance(self.max_requests, int) or self.max_requests < 1):
            raise InvalidInputError(f"ServerConfig.max_requests: expected a positive int or None, "
                                    f"got {self.max_requests!r}")


@dataclass
class Counters:
    """What `/v1/stats` reports of the server itself."""

    requests: int = 0      # admitted
    rejected: int = 0      # 503: over max_requests
    failed: int = 0        # ended with an error (before or after the first chunk)
    cancelled: int = 0     # the client went away before the last chunk
    in_flight: int = 0
    first_chunk_ms: list[float] = field(default_factory=list)  # last 1,000 admitted requests
    first_chunk: Histogram = field(default_factory=Histogram)  # all of them, seconds (GET /metrics)

    def as_dict(self) -> dict:
        ttfa = sorted(self.first_chunk_ms)
        p50 = ttfa[len(ttfa) // 2] if ttfa else None
        return {"requests": self.requests, "rejected": self.rejected, "failed": self.failed,
                "cancelled": self.cancelled, "in_flight": self.in_flight, "first_chunk_ms_p50": p50}

    def record_first_chunk(self, ms: float) -> None:
        self.first_chunk_ms.append(ms)
        del self.first_chunk_ms[:-1000]
        self.first_chunk.observe(ms / 1e3)


class Admission:
    """At most `limit` requests in flight; `enter()` raises Overloaded past it."""

    def __init__(self, limit: int, counters: Counters) -> None:
        self.limit, self.counters = limit, counters

    def enter(self) -> None:
        if self.counters.in_flight >= self.limit:
            self.counters.rejected += 1
            raise Overloaded(f"server busy: {self.counters.in_flight} requests in flight (limit {self.limit}); "
                             "retry later")
        self.counters.in_flight += 1
        self.counters.requests += 1

    def leave(self) -> None:
        self.counters.in_flight -= 1


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class StoredVoice:
    """One uploaded prompt: decoded samples [C, N] float32, their rate, and (optionally) what is said in
    them, which `POST /v1/audio/speech` needs as the clone prompt's text."""

    samples: np.ndarray
    sample_rate: int
    text: str | None = None

    @property
    def audio(self) -> tuple[np.ndarray, int]:
        """The (samples, sample_rate) pair the Runtime takes as audio input."""
        return self.samples, self.sample_rate


class VoiceRegistry:
    """Uploaded prompt audio by id (sha256 of the file bytes) or by a chosen name, decoded once, LRU
    within a byte budget.

    A request naming a voice skips the upload and the decode; the Runtime's own voice cache then skips
    the front end as well (it keys on the samples). A name points at one voice: naming another voice
    the same moves it; an evicted voice takes its names with it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._voices: OrderedDict[str, StoredVoice] = OrderedDict()
        self._names: dict[str, str] = {}  # name -> voice id
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:32]

    @staticmethod
    def check_name(name: str) -> str:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidInputError(f"name: expected 1-64 letters, digits, '_', '.' or '-' (starting with a letter "
                                    f"or digit), got {name!r}")
        return name

    def put(self, voice_id: str, voice: StoredVoice, name: str | None = None) -> StoredVoice:
        """Store (or refresh: a new transcript replaces the old one) a voice; `name` (checked) points at it.
        Returns what is stored (an upload without text keeps the earlier transcript)."""
        size = voice.samples.nbytes
        if size > self.max_bytes:
            raise InvalidInputError(f"audio: {size} bytes of decoded samples exceed the voice registry's "
                                    f"budget of {self.max_bytes} bytes")
        with self._lock:
            old = self._voices.pop(voice_id, None)
            if old is not None:
                self._bytes -= old.samples.nbytes
                voice = voice if voice.text is not None else old  # an upload without text keeps the transcript
            self._voices[voice_id] = voice
            self._bytes += size
            if name is not None:
                self._names[self.check_name(name)] = voice_id
            while self._bytes > self.max_bytes:
                evicted_id, evicted = self._voices.popitem(last=False)
                self._bytes -= evicted.samples.nbytes
                self._names = {n: v for n, v in self._names.items() if v != evicted_id}
            return voice  # the newest entry: never the one evicted (its size is within the budget)

    def get(self, ref: str, field: str = "voice_id") -> StoredVoice:
        """The voice with id or name `ref`; UnknownVoice (HTTP 404) naming `field` otherwise."""
        with self._lock:
            voice_id = self._resolve(ref, field)
            self._voices.move_to_end(voice_id)
            return self._voices[voice_id]

    def remove(self, ref: str, field: str = "voice_id") -> tuple[str, StoredVoice]:
        """Forget the voice with id or name `ref` and every name of it; UnknownVoice (404) otherwise."""
        with self._lock:
            voice_id = self._resolve(ref, field)
            voice = self._voices.pop(voice_id)
            self._bytes -= voice.samples.nbytes
            self._names = {n: v for n, v in self._names.items() if v != voice_id}
            return voice_id, voice

    def describe(self) -> list[dict]:
        """Every stored voice, oldest use first: id, names, whether it has a transcript, duration."""
        with self._lock:
            return [{"voice_id": voice_id, "names": self._names_of(voice_id), "has_text": voice.text is not None,
                     "duration_s": round(voice.samples.shape[-1] / voice.sample_rate, 3)}
                    for voice_id, voice in self._voices.items()]

    def names_of(self, voice_id: str) -> list[str]:
        with self._lock:
            return self._names_of(voice_id)

    # -- under the held lock ----------------------------------------------------------------
    def _resolve(self, ref: str, field: str) -> str:
        """The id of the voice `ref` names (an id, else a name); UnknownVoice (404) naming `field`."""
        voice_id = ref if ref in self._voices else self._names.get(ref)
        if voice_id is None:
            raise UnknownVoice(f"{field}: unknown voice {ref!r} (never uploaded, deleted or evicted); "
                               "upload the audio with POST /v1/voices")
        return voice_id

    def _names_of(self, voice_id: str) -> list[str]:
        return sorted(n for n, v in self._names.items() if v == voice_id)

    def __len__(self) -> int:
        return len(self._voices)

    @property
    def nbytes(self) -> int:
        return self._bytes
