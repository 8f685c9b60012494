"""`POST /v1/audio/speech` as OpenAI defines it, so OpenAI client libraries can call the server.

The request names a voice uploaded beforehand with its transcript (`POST /v1/voices` with `text`,
optionally a `name` such as "alloy"); the server clones it speaking `input`. What maps:
`response_format` "wav" (streamed, open-ended header) and "pcm" (OpenAI's raw 24 kHz 16-bit
little-endian mono, exactly our `pcm16`); `stream_format` "audio" (the bytes themselves) or "sse"
(server-sent events: `speech.audio.delta` events with base64 audio as each chunk is made, then one
`speech.audio.done` with the token usage). What cannot map is refused with a 400 naming the field
rather than silently ignored: the compressed formats (no encoder here), `speed` other than 1 (the
model changes speed by an edit: `POST /v1/edit` with edit_type "speed") and `instructions` (style
edits are `POST /v1/edit` too).
"""
from __future__ import annotations

import base64
import json

import numpy as np

from ..errors import InvalidInputError
from ..types import StreamUsage
from . import wire
from .schemas import SpeechBody
from .state import StoredVoice

RESPONSE_FORMATS = {"wav": "wav", "pcm": "pcm16"}  # OpenAI name -> our wire format
COMPRESSED = ("mp3", "opus", "aac", "flac")


def wire_format(body: SpeechBody) -> str:
    """Our wire format for the request, after refusing what the server cannot honour."""
    if not body.input.strip():
        raise InvalidInputError("input: the text to speak is empty")
    fmt = body.response_format
    if fmt in COMPRESSED:
        raise InvalidInputError(f"response_format: {fmt!r} is not available from this server (no audio encoder); "
                                "use 'wav' or 'pcm'")
    if fmt not in RESPONSE_FORMATS:
        raise InvalidInputError(f"response_format: unknown format {fmt!r}; use 'wav' or 'pcm'")
    if body.speed != 1.0:
        raise InvalidInputError(f"speed: only 1.0 is supported (got {body.speed}); for faster or slower speech edit "
                                "the audio with POST /v1/edit, edit_type 'speed'")
    if body.instructions is not None:
        raise InvalidInputError("instructions: not supported; emotion and style changes are edits "
                                "(POST /v1/edit, edit_type 'emotion' or 'style')")
    if body.stream_format not in STREAM_FORMATS:
        raise InvalidInputError(f"stream_format: unknown {body.stream_format!r}; use 'audio' or 'sse'")
    return RESPONSE_FORMATS[fmt]


STREAM_FORMATS = ("audio", "sse")


def framing(body: SpeechBody, fmt: str, sample_rate: int):
    """How the streamed body carries the audio: plain bytes, or OpenAI's speech events."""
    raw = wire.RawFraming(fmt, sample_rate)
    return SpeechEvents(raw) if body.stream_format == "sse" else raw


class SpeechEvents:
    """OpenAI's speech stream as server-sent events. Each chunk is one `speech.audio.delta` whose
    `audio` is base64 of that chunk's bytes in the response format (the WAV header rides in the first
    delta), so the decoded deltas concatenated are exactly the `stream_format: "audio"` body. The
    last event is `speech.audio.done` with `usage`: input_tokens = ids the LLM read (the voice's
    audio codes and both texts included), output_tokens = ids it generated."""

    media_type = "text/event-stream"

    def __init__(self, raw: wire.RawFraming) -> None:
        self.raw = raw
        self._header = raw.start()

    def start(self) -> bytes:
        return b""

    def chunk(self, samples: np.ndarray) -> bytes:
        data, self._header = self._header + self.raw.chunk(samples), b""
        if not data:  # an empty last chunk: nothing to play, the done event follows
            return b""
        return _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})

    def end(self, usage: StreamUsage | None) -> bytes:
        done: dict = {"type": "speech.audio.done"}
        if usage is not None:
            done["usage"] = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.generated_tokens,
                             "total_tokens": usage.prompt_tokens + usage.generated_tokens}
        return _event(done)


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def prompt_text(voice: StoredVoice, ref: str) -> str:
    """The clone prompt's text: the transcript uploaded with the voice."""
    if voice.text is None:
        raise InvalidInputError(f"voice: {ref!r} was uploaded without its transcript; upload it again with "
                                "POST /v1/voices including \"text\" (what is said in the audio)")
    return voice.text
