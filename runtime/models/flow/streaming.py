"""Streaming flow decoding (upstream `setup_cache` / `inference_chunk` + the token2wav_stream driver rule).

* `setup_stream` encodes prompt + 3 lookahead token frames and runs all ODE steps over
  the prompt with the real prompt mel as cond, only to build the caches (no mel out).
* `inference_chunk` decodes one chunk (its frames + lookahead, or everything left on
  the last call) against those caches and returns a new state: `FlowStreamState` is
  immutable, so one state can seed several continuations.
* `next_stream_action` / `plan_stream_chunks` are the pure chunk-planning rules of
  upstream's `token2wav_stream` (when to set up, when a chunk is due, how many ids it
  takes and how far the window advances), for token2wav to drive.

Caveat for reuse: the state after `setup_stream` depends on the first lookahead frames
(they pass through the pre-lookahead conv and full attention with the prompt), so it is
exact only for continuations that start with the same 3 token frames.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ...errors import InvalidInputError
from .cfm import EstimatorStreamCache
from .encoder import EncoderChunkCache
from .flow import FlowModel, align_prompt_mel, check_float, slice_noise
from .tokens import check_pair_ids, mixed_len


@dataclass(frozen=True)
class FlowStreamState:
    """Per-request streaming state (tensors are never written in place; share freely).

    spks `[1, 80]` projected x-vector; encoder / estimator caches; prompt_frames = prompt
    mel frames (kept at the end of the DiT cache when it is truncated); n_timesteps of the ODE;
    left_context = newest DiT-cache frames kept besides the prompt.
    """

    spks: torch.Tensor
    encoder: EncoderChunkCache
    estimator: EstimatorStreamCache
    prompt_frames: int
    n_timesteps: int
    left_context: int

    @property
    def noise_offset(self) -> int:
        """Where the next chunk's start noise begins in the noise buffer (= cached DiT frames)."""
        return self.estimator.frames


@torch.inference_mode()
def setup_stream(
    model: FlowModel,
    prompt_pairs: torch.Tensor,
    lookahead_pairs: torch.Tensor,
    prompt_feat: torch.Tensor,
    embedding: torch.Tensor,
    noise: torch.Tensor,
    n_timesteps: int | None = None,
    left_context: int | None = None,
) -> FlowStreamState:
    """Build the streaming caches from the prompt.

    prompt_pairs `[1, Tp, 2]`; lookahead_pairs `[1, L, 2]` = the first `pre_lookahead_len` target
    frames (upstream: the first 5 mixed ids reshaped); prompt_feat `[1, T_mel, 80]` (nearest-resized
    to 2·Tp frames if needed); embedding `[1, 192]`; noise `[1, 80, N ≥ 2·Tp]`. Ids are not clamped
    (as upstream): negative ids are an InvalidInputError. n_timesteps / left_context default to
    the model config (`n_timesteps`, `stream_att_left_context`).
    """
    n_timesteps = model.resolve_n_timesteps(n_timesteps)
    left_context = model.cfg.stream_att_left_context if left_context is None else left_context
    if not isinstance(left_context, int) or left_context < 1:
        raise InvalidInputError(f"left_context: expected a positive int, got {left_context!r}")
    lookahead = model.cfg.encoder.pre_lookahead_len
    for name, pairs in (("prompt_pairs", prompt_pairs), ("lookahead_pairs", lookahead_pairs)):
        check_pair_ids(pairs, model.cfg.vocab_size, name, allow_negative=False)
        if pairs.shape[0] != 1:
            raise InvalidInputError(f"{name}: batch size must be 1, got {pairs.shape[0]}")
    if lookahead_pairs.shape[1] != lookahead:
        raise InvalidInputError(
            f"lookahead_pairs: expected {lookahead} token frames, got {lookahead_pairs.shape[1]}")
    prompt_frames = model.cfg.token_mel_ratio * prompt_pairs.shape[1]
    check_float(prompt_feat, "prompt_feat", (1, None, model.cfg.output_size))
    cond = align_prompt_mel(prompt_feat, prompt_frames).to(model.device, model.dtype).transpose(1, 2)

    spks = model.project_speaker(embedding)
    tokens = torch.cat([prompt_pairs, lookahead_pairs.to(prompt_pairs.device)], dim=1)
    h, encoder_cache = model.encoder.forward_chunk(model.embed_tokens(tokens, clamp=False), None, last=False)
    mu = model.encoder_proj(h).transpose(1, 2)  # [1, 80, 2Tp]
    x0 = slice_noise(noise, 0, mu.shape[2], model.cfg.output_size).to(model.device)
    _, estimator_cache = model.decoder.solve_chunk(mu, spks, cond, x0, n_timesteps, None)
    return FlowStreamState(spks=spks, encoder=encoder_cache, estimator=estimator_cache,
                           prompt_frames=prompt_frames, n_timesteps=n_timesteps, left_context=left_context)


@torch.inference_mode()
def inference_chunk(
    model: FlowModel,
    pairs: torch.Tensor,
    state: FlowStreamState,
    last: bool,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, FlowStreamState]:
    """Decode one chunk.

    pairs `[1, T, 2]`: the chunk's frames followed by `pre_lookahead_len` lookahead frames
    (when not `last`), or all remaining frames (when `last`; zeros stand in for the lookahead).
    noise `[1, 80, N]`: the start noise is `noise[:, :, offset : offset + T_mel]` with
    offset = `state.noise_offset`. Returns (mel `[1, 80, 2·T']` float32, new state); the
    DiT cache of the new state is truncated to prompt + `state.left_context` frames.
    """
    if not isinstance(state, FlowStreamState):
        raise InvalidInputError(f"state: expected a FlowStreamState from setup_stream, got {type(state).__name__}")
    check_pair_ids(pairs, model.cfg.vocab_size, "pairs", allow_negative=False)
    if pairs.shape[0] != 1:
        raise InvalidInputError(f"pairs: batch size must be 1, got {pairs.shape[0]}")
    lookahead = model.cfg.encoder.pre_lookahead_len
    if not last and pairs.shape[1] <= lookahead:
        raise InvalidInputError(
            f"pairs: a non-final chunk needs more than the {lookahead} lookahead frames, got {pairs.shape[1]}")

    h, encoder_cache = model.encoder.forward_chunk(model.embed_tokens(pairs, clamp=False), state.encoder, last)
    mu = model.encoder_proj(h).transpose(1, 2)  # [1, 80, T_mel]
    x0 = slice_noise(noise, state.noise_offset, mu.shape[2], model.cfg.output_size).to(model.device)
    mel, estimator_cache = model.decoder.solve_chunk(
        mu, state.spks, torch.zeros_like(mu), x0, state.n_timesteps, state.estimator)
    estimator_cache = estimator_cache.truncated(state.prompt_frames, state.left_context)
    return mel, replace(state, encoder=encoder_cache, estimator=estimator_cache)


# -- chunk planning (pure) --------------------------------------------------------------
@dataclass(frozen=True)
class StreamAction:
    """What a streaming call does with its buffer of mixed ids.

    kind: "wait" (nothing), "setup" (`setup_stream` on buffer[:take], emits nothing),
    "chunk" (`inference_chunk` on buffer[:take], then drop buffer[:advance]),
    "flush" (`inference_chunk(last=True)` on the whole buffer).
    chunk_sizes: the chunk-size list to use for the next call.
    """

    kind: Literal["wait", "setup", "chunk", "flush"]
    take: int
    advance: int
    chunk_sizes: tuple[int, ...]


def next_stream_action(
    n_buffered: int,
    setup_done: bool,
    chunk_sizes: tuple[int, ...],
    last: bool,
    lookahead_frames: int = 3,
) -> StreamAction:
    """Upstream token2wav_stream's rule for one call, after the call's ids were appended.

    n_buffered: mixed ids in the buffer (setup does not consume any: its lookahead ids are the
    first ids of the first chunk). chunk_sizes: remaining chunk sizes in token frames; after a
    chunk the first is dropped while more than one remains. One action per call, as upstream:
    a call that sets up emits nothing, even when it is the last call.
    """
    sizes = tuple(int(c) for c in chunk_sizes)
    if not sizes:
        raise InvalidInputError("chunk_sizes: at least one chunk size is needed")
    lookahead_ids = mixed_len(lookahead_frames)
    if not setup_done:
        if n_buffered >= lookahead_ids:
            return StreamAction("setup", lookahead_ids, 0, sizes)
        return StreamAction("wait", 0, 0, sizes)
    popped = sizes[1:] if len(sizes) > 1 else sizes
    if last:
        return StreamAction("flush", n_buffered, n_buffered, popped)
    chunk_ids = mixed_len(sizes[0])
    if n_buffered >= chunk_ids + lookahead_ids:
        return StreamAction("chunk", chunk_ids + lookahead_ids, chunk_ids, popped)
    return StreamAction("wait", 0, 0, sizes)


def plan_stream_chunks(
    n_ids: int,
    chunk_sizes: tuple[int, ...] = (15, 24, 48),
    lookahead_frames: int = 3,
) -> list[tuple[int, StreamAction, int]]:
    """Simulate feeding `n_ids` mixed ids one per call (the last call flagged `last`).

    Returns the non-"wait" actions as (call index, action, buffer start) where buffer start
    is the index of the first buffered id in the full sequence, so the action's ids are
    `ids[start : start + action.take]`.
    """
    plan = []
    start, buffered, setup_done, sizes = 0, 0, False, tuple(chunk_sizes)
    for call in range(n_ids):
        buffered += 1
        action = next_stream_action(buffered, setup_done, sizes, call == n_ids - 1, lookahead_frames)
        if action.kind == "wait":
            continue
        plan.append((call, action, start))
        setup_done = True
        sizes = action.chunk_sizes
        start += action.advance
        buffered -= action.advance
    return plan
