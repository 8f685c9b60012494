"""Types shared by both schedulers (`scheduler.Scheduler` in C++, `py_scheduler.PyScheduler`):
request states, finish reasons, decoder item kinds, and the scheduling policy `SchedulerConfig`."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import InvalidInputError


class RequestState(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    DRAINING = 2  # LLM done, decoder still has ids to turn into audio
    ENDED = 3


class FinishReason(enum.IntEnum):
    EOS = 0
    LENGTH = 1
    ERROR = 2
    CANCELLED = 3


class DecoderKind(enum.IntEnum):
    SETUP = 0  # prompt caches from the first lookahead ids; no audio
    CHUNK = 1
    FINAL = 2


def mixed_ids_for_frames(frames: int) -> int:
    """Mixed audio ids holding `frames` token frames: (frames // 3) * 5 (spec §6, §11.5)."""
    return frames // 3 * 5


# ---- configuration -----------------------------------------------------------------------

_INT_LOWER_BOUNDS = {
    "block_size": 1, "num_blocks": 1, "max_num_seqs": 1, "max_prefill_chunk": 0, "max_model_len": 1,
    "admission_reserve_blocks": 0, "max_decoder_batch": 1, "decoder_lookahead_frames": 3,
    "decoder_holdback_ids": 0,
}


@dataclass(slots=True)
class SchedulerConfig:
    """Scheduling policy. Defaults are the real model's (spec §4.5 max_length 8192, §6 chunks).

    block_size: tokens per KV block. num_blocks: blocks in the pool (set from free memory; the
    full model's KV is 32 layers x 4 groups x 64 dims x K,V x bf16 = 32 KiB per token).
    max_num_seqs: running requests. max_num_batched_tokens: tokens per step (>= max_num_seqs).
    max_prefill_chunk: prefill tokens per request per step (0: budget only). max_model_len:
    prompt + generated tokens. admission_reserve_blocks: free blocks admission leaves for
    decodes. max_decoder_batch: decoder items per step. ttfa_target_s: first-audio deadline.
    decoder_chunk_frames / decoder_lookahead_frames: spec §6. decoder_holdback_ids: newest
    generated ids kept from the decoder (upstream drops the last generated id, spec §4.6).
    """

    block_size: int = 16
    num_blocks: int = 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_prefill_chunk: int = 0
    max_model_len: int = 8192
    admission_reserve_blocks: int = 0
    enable_prefix_caching: bool = True
    max_decoder_batch: int = 16
    ttfa_target_s: float = 0.25
    decoder_chunk_frames: tuple[int, ...] = (15, 24, 48)
    decoder_lookahead_frames: int = 3
    decoder_holdback_ids: int = 1

    def __post_init__(self) -> None:
        for name, lowest in _INT_LOWER_BOUNDS.items():
            _require_int(f"config.{name}", getattr(self, name), lowest)
        _require_int("config.max_num_batched_tokens", self.max_num_batched_tokens, self.max_num_seqs)
        if self.num_blocks * self.block_size < self.max_model_len:
            raise InvalidInputError(f"config.num_blocks: {self.num_blocks} blocks of {self.block_size} tokens cannot "
                                    f"hold one request of max_model_len {self.max_model_len}")
        if self.admission_reserve_blocks >= self.num_blocks:
            raise InvalidInputError("config.admission_reserve_blocks: must be < num_blocks")
        if not isinstance(self.enable_prefix_caching, bool):
            raise InvalidInputError("config.enable_prefix_caching: expected a bool")
        if isinstance(self.ttfa_target_s, bool) or not isinstance(self.ttfa_target_s, (int, float)) \
                or not math.isfinite(self.ttfa_target_s) or self.ttfa_target_s <= 0:
            raise InvalidInputError(f"config.ttfa_target_s: expected a finite number > 0, got {self.ttfa_target_s!r}")
        self.ttfa_target_s = float(self.ttfa_target_s)
        frames = tuple(self.decoder_chunk_frames)
        if not frames:
            raise InvalidInputError("config.decoder_chunk_frames: expected at least one chunk size")
        for f in frames:
            _require_int("config.decoder_chunk_frames[i]", f, 3)  # fewer than 3 frames hold no ids
        self.decoder_chunk_frames = frames

    @classmethod
    def full(cls, num_blocks: int = 8192, **overrides: Any) -> "SchedulerConfig":
        """The real model's policy (8192 blocks x 16 tokens = 4 GiB of bf16 KV by default)."""
        return cls(num_blocks=num_blocks, **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "SchedulerConfig":
        """Small pool and limits for the CPU `dummy:tiny` preset and tests."""
        values = dict(block_size=4, num_blocks=256, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512,
                      max_decoder_batch=4)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_flow(cls, flow_config: Any, **overrides: Any) -> "SchedulerConfig":
        """Decoder chunking read from a flow model config (`chunk_sizes`, `encoder.pre_lookahead_len`,
        as parsed from upstream's cosyvoice.yaml); everything else from `overrides` / defaults."""
        values = dict(decoder_chunk_frames=tuple(int(c) for c in flow_config.chunk_sizes),
                      decoder_lookahead_frames=int(flow_config.encoder.pre_lookahead_len))
        values.update(overrides)
        return cls(**values)

    def to_native(self):
        """The same policy as an `editx._scheduler.Config` (needs the built extension)."""
        from .. import _scheduler as _native

        native = _native.Config()
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(native, f.name, list(value) if f.name == "decoder_chunk_frames" else value)
        return native


def _require_int(name: str, value: Any, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name}: expected an int, got {value!r}")
    if value < lowest:
        raise InvalidInputError(f"{name}: expected >= {lowest}, got {value}")
