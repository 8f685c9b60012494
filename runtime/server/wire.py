"""Bytes on the wire: audio encodings of the HTTP server and base64 audio fields.

Formats (`format` of a request):
    "wav"    16-bit PCM WAV. Whole responses carry exact RIFF sizes; streamed ones a header whose
             sizes say "unknown" (0xFFFFFFFF) so players start before the end (ffmpeg, browsers and
             soundfile read such a stream to its end).
    "pcm16"  raw little-endian int16 samples, no header (`audio/L16`, RFC 2586 wording).
    "f32"    raw little-endian float32 samples exactly as the runtime made them.
Mono, 24 kHz throughout (the decoder's rate; `X-Sample-Rate` says so on every response).
"""
from __future__ import annotations

import base64
import binascii
import struct

import numpy as np

from ..errors import InvalidInputError

FORMATS = ("wav", "pcm16", "f32")
UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF "size unknown": the stream ends when the connection does


def media_type(fmt: str, sample_rate: int) -> str:
    """The Content-Type of a response in `fmt`."""
    check_format(fmt)
    if fmt == "wav":
        return "audio/wav"
    if fmt == "pcm16":
        return f"audio/L16; rate={sample_rate}; channels=1"
    return "application/octet-stream"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInputError(f"format: unknown audio format {fmt!r}; use one of {', '.join(FORMATS)}")


def wav_header(sample_rate: int, n_samples: int | None) -> bytes:
    """44-byte header of a mono 16-bit PCM WAV holding `n_samples` (None: unknown, for streams)."""
    data = UNKNOWN_SIZE if n_samples is None else 2 * n_samples
    riff = UNKNOWN_SIZE if n_samples is None else 36 + data
    byte_rate = 2 * sample_rate
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, 2, 16)
            + b"data" + struct.pack("<I", data))


def pcm16(samples: np.ndarray) -> bytes:
    """float32 [n] in [-1, 1] -> little-endian int16 bytes.

    floor(x · 32768) clipped to int16: libsndfile 1.2's float -> PCM_16 rule, so a streamed WAV holds the
    bytes `Audio.save` writes (older libsndfile rounded x · 32767: at most 1 LSB apart).
    """
    scaled = np.floor(np.asarray(samples, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def encode(samples: np.ndarray, fmt: str) -> bytes:
    """One chunk's samples [n] float32 in `fmt` ("wav" chunks are bare PCM16 after the header)."""
    if fmt == "f32":
        return np.asarray(samples, dtype="<f4").tobytes()
    return pcm16(samples)


class RawFraming:
    """A streamed body as plain audio bytes: the WAV header first (wav), then each chunk's bytes."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        check_format(fmt)
        self.fmt, self.sample_rate = fmt, sample_rate
        self.media_type = media_type(fmt, sample_rate)

    def start(self) -> bytes:
        return wav_header(self.sample_rate, None) if self.fmt == "wav" else b""

    def chunk(self, samples: np.ndarray) -> bytes:
        return encode(samples, self.fmt)

    def end(self, usage) -> bytes:  # noqa: ARG002 - raw audio has nowhere to put it
        return b""


def whole(samples: np.ndarray, fmt: str, sample_rate: int) -> bytes:
    """A complete response body: samples [N] float32 in `fmt` (a WAV with exact sizes)."""
    body = encode(samples, fmt)
    return wav_header(sample_rate, len(samples)) + body if fmt == "wav" else body


def decode_base64_audio(value: str, field: str, max_bytes: int) -> bytes:
    """The bytes of a base64 audio field (standard or URL-safe alphabet, padding optional)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field}: expected base64-encoded audio file bytes, got an empty value")
    if len(value) * 3 // 4 > max_bytes:
        raise InvalidInputError(f"{field}: about {len(value) * 3 // 4} bytes of audio, over the server's limit "
                                f"of {max_bytes} bytes")
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{field}: not valid base64 ({exc})") from exc
