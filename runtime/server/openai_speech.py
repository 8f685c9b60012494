"""`POST /v1/audio/speech` as OpenAI defines it, so OpenAI client libraries can call the server.

The request names a voice uploaded beforehand with its transcript (`POST /v1/voices` with `text`,
optionally a `name` such as "alloy"); the server clones it speaking `input`. What maps:
`response_format` "wav" (streamed, open-ended header) and "pcm" (OpenAI's raw 24 kHz 16-bit
little-endian mono, exactly our `pcm16`). What cannot map is refused with a 400 naming the field
rather than silently ignored: the compressed formats (no encoder here), `speed` other than 1 (the
model changes speed by an edit: `POST /v1/edit` with edit_type "speed"), `instructions` (style
edits are `POST /v1/edit` too) and `stream_format` "sse".
"""
from __future__ import annotations

from ..errors import InvalidInputError
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
    if body.stream_format != "audio":
        raise InvalidInputError(f"stream_format: only 'audio' is supported, got {body.stream_format!r}")
    return RESPONSE_FORMATS[fmt]


def prompt_text(voice: StoredVoice, ref: str) -> str:
    """The clone prompt's text: the transcript uploaded with the voice."""
    if voice.text is None:
        raise InvalidInputError(f"voice: {ref!r} was uploaded without its transcript; upload it again with "
                                "POST /v1/voices including \"text\" (what is said in the audio)")
    return voice.text
