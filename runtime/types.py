"""Public value types returned by the Runtime."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTPUT_SAMPLE_RATE = 24000


@dataclass(frozen=True)
class Audio:
    """Mono float32 PCM.

    Attributes:
        samples: [N] float32 in [-1, 1] (the decoder clamps to ±0.99).
        sample_rate: Hz (24,000 for everything the decoder produces).
        text: the text this audio speaks, when known (a paralinguistic edit returns the
            tagged text; iterative edits pass it on as the next `audio_text`, spec §2.4).
        info: per-request measurements (token counts, stage times in seconds).
    """

    samples: np.ndarray
    sample_rate: int = OUTPUT_SAMPLE_RATE
    text: str | None = None
    info: dict = field(default_factory=dict, compare=False)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / float(self.sample_rate)

    def save(self, path: str | Path) -> Path:
        """Write a 16-bit PCM WAV (what upstream's tts_infer.py writes, spec §2.4)."""
        import soundfile as sf

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), _clipped(self.samples), self.sample_rate, subtype="PCM_16")
        return p

    def to_pcm16_roundtrip(self) -> "Audio":
        """The audio as it reads back from a 16-bit WAV (upstream's iterative edits pass through one)."""
        import io

        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, _clipped(self.samples), self.sample_rate, format="WAV", subtype="PCM_16")
        buf.seek(0)
        data, sr = sf.read(buf, dtype="float32", always_2d=False)
        return Audio(np.ascontiguousarray(data, dtype=np.float32), int(sr), self.text, dict(self.info))


def _clipped(samples: np.ndarray) -> np.ndarray:
    """Samples limited to [-1, 1] for 16-bit PCM (the streamed cross-fade can exceed 0.99 slightly;
    past full scale libsndfile's integer conversion must not see it)."""
    return np.clip(samples, -1.0, 1.0)


@dataclass(frozen=True)
class StreamUsage:
    """What one streamed request cost, on its last chunk.

    prompt_tokens: ids the LLM read (system prompt, the voice's audio codes and both texts);
    generated_tokens: ids it generated (audio codes and the stop id); stop_reason: "stop_id" (the
    model ended the speech) or "length" (max_new_tokens / max_length cut it: the audio may end
    mid-word).
    """

    prompt_tokens: int
    generated_tokens: int
    stop_reason: str | None


@dataclass(frozen=True)
class AudioChunk:
    """One piece of a streamed result: samples [n] float32, its index, and whether it is the last;
    the last chunk also carries the request's `usage`."""

    samples: np.ndarray
    sample_rate: int
    index: int
    is_last: bool
    usage: StreamUsage | None = None
