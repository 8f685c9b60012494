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
from typing import Literal, Sequence

import torch

from ...errors import InvalidInputError
from .cfm import EstimatorStreamCache
from .dit import DiT
from .dit_slots import DiTSlots, SlotCache, SlotRow
from .encoder import EncoderChunkCache
from .flow import FlowModel, align_prompt_mel, check_float, slice_noise
from .tokens import check_pair_ids, mixed_len


@dataclass(frozen=True)
class FlowStreamState:
    """Per-request streaming state (its packed tensors are never written in place).

    spks `[1, 80]` projected x-vector; encoder / estimator caches (the estimator's either packed
    tensors or a `SlotCache` in a `DiTSlots` pool, whose slot is written in place: such a state seeds
    one continuation); prompt_frames = prompt mel frames (kept at the end of the DiT cache when it is
    truncated); n_timesteps of the ODE; left_context = newest DiT-cache frames kept besides the prompt.
    """

    spks: torch.Tensor
    encoder: EncoderChunkCache
    estimator: EstimatorStreamCache | SlotCache
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
    left_context = _resolve_left_context(model, left_context)
    tokens, cond, prompt_frames = _setup_inputs(model, prompt_pairs, lookahead_pairs, prompt_feat)

    spks = model.project_speaker(embedding)
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
    _check_chunk_inputs(model, pairs, state, last)
    h, encoder_cache = model.encoder.forward_chunk(model.embed_tokens(pairs, clamp=False), state.encoder, last)
    mu = model.encoder_proj(h).transpose(1, 2)  # [1, 80, T_mel]
    x0 = slice_noise(noise, state.noise_offset, mu.shape[2], model.cfg.output_size).to(model.device)
    if isinstance(state.estimator, SlotCache):
        mel, (slot_cache,) = _slot_chunks(mu, state.spks, x0, [mu.shape[2]], [state])
        return mel, replace(state, encoder=encoder_cache, estimator=slot_cache)
    mel, estimator_cache = model.decoder.solve_chunk(
        mu, state.spks, torch.zeros_like(mu), x0, state.n_timesteps, state.estimator)
    estimator_cache = estimator_cache.truncated(state.prompt_frames, state.left_context)
    return mel, replace(state, encoder=encoder_cache, estimator=estimator_cache)


def _resolve_left_context(model: FlowModel, left_context: int | None) -> int:
    left_context = model.cfg.stream_att_left_context if left_context is None else left_context
    if not isinstance(left_context, int) or left_context < 1:
        raise InvalidInputError(f"left_context: expected a positive int, got {left_context!r}")
    return left_context


def _setup_inputs(
    model: FlowModel, prompt_pairs: torch.Tensor, lookahead_pairs: torch.Tensor, prompt_feat: torch.Tensor,
    what: str = "",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check one stream's set-up inputs → (tokens `[1, Tp+L, 2]`, cond `[1, 80, 2·Tp]` in the module
    dtype, prompt mel frames 2·Tp). `what` prefixes argument names (e.g. "[2]" for batch entry 2)."""
    lookahead = model.cfg.encoder.pre_lookahead_len
    for name, pairs in (("prompt_pairs", prompt_pairs), ("lookahead_pairs", lookahead_pairs)):
        check_pair_ids(pairs, model.cfg.vocab_size, name + what, allow_negative=False)
        if pairs.shape[0] != 1:
            raise InvalidInputError(f"{name}{what}: batch size must be 1, got {pairs.shape[0]}")
    if lookahead_pairs.shape[1] != lookahead:
        raise InvalidInputError(
            f"lookahead_pairs{what}: expected {lookahead} token frames, got {lookahead_pairs.shape[1]}")
    prompt_frames = model.cfg.token_mel_ratio * prompt_pairs.shape[1]
    check_float(prompt_feat, "prompt_feat" + what, (1, None, model.cfg.output_size))
    cond = align_prompt_mel(prompt_feat, prompt_frames).to(model.device, model.dtype).transpose(1, 2)
    tokens = torch.cat([prompt_pairs, lookahead_pairs.to(prompt_pairs.device)], dim=1)
    return tokens, cond, prompt_frames


def _check_chunk_inputs(model: FlowModel, pairs: torch.Tensor, state: FlowStreamState, last: bool,
                        what: str = "") -> None:
    if not isinstance(state, FlowStreamState):
        raise InvalidInputError(
            f"state{what}: expected a FlowStreamState from setup_stream, got {type(state).__name__}")
    check_pair_ids(pairs, model.cfg.vocab_size, "pairs" + what, allow_negative=False)
    if pairs.shape[0] != 1:
        raise InvalidInputError(f"pairs{what}: batch size must be 1, got {pairs.shape[0]}")
    lookahead = model.cfg.encoder.pre_lookahead_len
    if not last and pairs.shape[1] <= lookahead:
        raise InvalidInputError(
            f"pairs{what}: a non-final chunk needs more than the {lookahead} lookahead frames, got {pairs.shape[1]}")


# -- several streams at once (ragged batches) -------------------------------------------
@torch.inference_mode()
def setup_stream_batch(
    model: FlowModel,
    prompt_pairs: Sequence[torch.Tensor],
    lookahead_pairs: Sequence[torch.Tensor],
    prompt_feats: Sequence[torch.Tensor],
    embeddings: Sequence[torch.Tensor],
    noise: torch.Tensor,
    n_timesteps: int | None = None,
    left_context: int | None = None,
    slots: DiTSlots | None = None,
) -> list[FlowStreamState]:
    """`setup_stream` of B streams in one batched pass (prompts of any lengths).

    Entry b takes the arguments `setup_stream` takes (prompt_pairs[b] `[1, Tp_b, 2]`,
    lookahead_pairs[b] `[1, L, 2]`, prompt_feats[b] `[1, T_mel_b, 80]`, embeddings[b] `[1, 192]`);
    noise, n_timesteps and left_context are shared. Returns B states, each equal to its
    `setup_stream` state up to floating-point reduction order.

    slots: a `DiTSlots` pool; when it fits these streams and has a free slot for each, their DiT
    caches live there (static-shape solves, CUDA graphs); otherwise they get packed tensors.
    """
    n_timesteps = model.resolve_n_timesteps(n_timesteps)
    left_context = _resolve_left_context(model, left_context)
    batch = _batch_size(prompt_pairs=prompt_pairs, lookahead_pairs=lookahead_pairs, prompt_feats=prompt_feats,
                        embeddings=embeddings)
    tokens, conds, prompt_frames = [], [], []
    for b in range(batch):
        t, c, n = _setup_inputs(model, prompt_pairs[b], lookahead_pairs[b], prompt_feats[b], f"[{b}]")
        check_float(embeddings[b], f"embeddings[{b}]", (1, model.cfg.spk_embed_dim))
        tokens.append(t)
        conds.append(c)
        prompt_frames.append(n)
    if not _takes_batch(model, ragged=len(set(prompt_frames)) > 1):
        return [setup_stream(model, *args, noise, n_timesteps, left_context)
                for args in zip(prompt_pairs, lookahead_pairs, prompt_feats, embeddings)]

    spks = model.project_speaker(torch.cat([e.to(model.device) for e in embeddings]))  # [B, 80]
    xs = model.embed_tokens(_right_padded_pairs(tokens), clamp=False)
    h, n_mel, encoder_caches = model.encoder.forward_chunk_ragged(
        xs, [t.shape[1] for t in tokens], [None] * batch, [False] * batch)
    mu = model.encoder_proj(h).transpose(1, 2)  # [B, 80, W]
    cond = _right_padded_rows(conds, mu.shape[2])
    x0 = _noise_rows(model, noise, [0] * batch, n_mel, mu.shape[2])
    leases = None
    if slots is not None and slots.fits(n_timesteps, left_context, prompt_frames):
        leases = slots.acquire(batch)
    if leases is not None:
        slot_caches = _slot_setups(slots, leases, mu, spks, cond, x0, n_mel)
        return [FlowStreamState(spks=spks[b:b + 1], encoder=encoder_caches[b], estimator=slot_caches[b],
                                prompt_frames=prompt_frames[b], n_timesteps=n_timesteps, left_context=left_context)
                for b in range(batch)]
    _, estimator = model.decoder.solve_chunk(mu, spks, cond, x0, n_timesteps, None, n_valid=n_mel)
    return [
        FlowStreamState(spks=spks[b:b + 1], encoder=encoder_caches[b],
                        estimator=_unpack_estimator(estimator, b, batch, mu.shape[2], n_mel[b], 0),
                        prompt_frames=prompt_frames[b], n_timesteps=n_timesteps, left_context=left_context)
        for b in range(batch)
    ]


@torch.inference_mode()
def inference_chunk_batch(
    model: FlowModel,
    pairs: Sequence[torch.Tensor],
    states: Sequence[FlowStreamState],
    last: Sequence[bool],
    noise: torch.Tensor,
) -> tuple[list[torch.Tensor], list[FlowStreamState]]:
    """`inference_chunk` of B streams in one batched pass (ragged chunks and caches).

    Entry b: pairs[b] `[1, T_b, 2]`, states[b] (all with the same n_timesteps), last[b], as
    `inference_chunk` takes them; the noise buffer is shared (each stream reads it at its own
    offset). Chunks, encoder caches and DiT caches are right/left-padded to the longest and
    padded keys are masked, so each result equals its `inference_chunk` result up to
    floating-point reduction order. Returns (mels `[1, 80, 2·T'_b]` float32, new states).
    """
    batch = _batch_size(pairs=pairs, states=states, last=last)
    for b in range(batch):
        _check_chunk_inputs(model, pairs[b], states[b], bool(last[b]), f"[{b}]")
    steps = {s.n_timesteps for s in states}
    if len(steps) != 1:
        raise InvalidInputError(f"states: all streams of one batch need the same n_timesteps, got {sorted(steps)}")
    groups = _cache_groups(states)
    if len(groups) > 1:  # packed caches and slot pools run as separate batches
        return _merged(groups, lambda idx: inference_chunk_batch(
            model, [pairs[b] for b in idx], [states[b] for b in idx], [last[b] for b in idx], noise))
    shapes = {(p.shape[1], bool(end), s.estimator.frames) for p, end, s in zip(pairs, last, states)}
    if not _takes_batch(model, ragged=len(shapes) > 1):
        mels, new_states = [], []
        for p, s, end in zip(pairs, states, last):
            mel, state = inference_chunk(model, p, s, bool(end), noise)
            mels.append(mel)
            new_states.append(state)
        return mels, new_states

    xs = model.embed_tokens(_right_padded_pairs(pairs), clamp=False)
    h, n_mel, encoder_caches = model.encoder.forward_chunk_ragged(
        xs, [p.shape[1] for p in pairs], [s.encoder for s in states], [bool(x) for x in last])
    mu = model.encoder_proj(h).transpose(1, 2)  # [B, 80, W]
    x0 = _noise_rows(model, noise, [s.noise_offset for s in states], n_mel, mu.shape[2])
    spks = torch.cat([s.spks for s in states])  # [B, 80]
    if isinstance(states[0].estimator, SlotCache):
        mel, slot_caches = _slot_chunks(mu, spks, x0, n_mel, states)
        return ([mel[b:b + 1, :, :n_mel[b]].clone() for b in range(batch)],
                [replace(s, encoder=encoder_caches[b], estimator=slot_caches[b]) for b, s in enumerate(states)])
    cached = [s.estimator.frames for s in states]
    mel, estimator = model.decoder.solve_chunk(
        mu, spks, torch.zeros_like(mu), x0, steps.pop(), _pack_estimator([s.estimator for s in states]),
        n_valid=n_mel, n_cached=cached)
    mels, new_states = [], []
    for b, state in enumerate(states):
        mels.append(mel[b:b + 1, :, :n_mel[b]].clone())
        est = _unpack_estimator(estimator, b, batch, mu.shape[2], n_mel[b], cached[b],
                                state.prompt_frames, state.left_context)
        new_states.append(replace(state, encoder=encoder_caches[b], estimator=est))
    return mels, new_states


def _slot_setups(slots: DiTSlots, leases, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
                 x0: torch.Tensor, n_mel: Sequence[int]) -> list[SlotCache]:
    """Run B set-ups in the pool slots `leases` (released again if the solve fails)."""
    rows = [SlotRow(lease, ring=False, head=0, n_valid=n, prompt=0, ring_frames=(), conv=None)
            for lease, n in zip(leases, n_mel)]
    try:
        _, convs = slots.solve(mu, spks, cond, x0, rows)
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    return [SlotCache(lease, n, 0, (), conv) for lease, n, conv in zip(leases, n_mel, convs)]


def _slot_chunks(mu: torch.Tensor, spks: torch.Tensor, x0: torch.Tensor, n_mel: Sequence[int],
                 states: Sequence[FlowStreamState]) -> tuple[torch.Tensor, list[SlotCache]]:
    """One chunk of B streams whose DiT caches live in one pool → (mel `[B, 80, W]`, new caches)."""
    caches = [s.estimator for s in states]
    rows = [SlotRow(c.lease, ring=True, head=c.head, n_valid=n, prompt=c.prompt_frames,
                    ring_frames=tuple(c.ring_frames()), conv=c.conv)
            for c, n in zip(caches, n_mel)]
    mel, convs = caches[0].lease.pool.solve(mu, spks, torch.zeros_like(mu), x0, rows)
    return mel, [c.after_chunk(n, conv, s.left_context) for c, n, conv, s in zip(caches, n_mel, convs, states)]


def _cache_groups(states: Sequence[FlowStreamState]) -> list[list[int]]:
    """Stream indices grouped by where their DiT caches live (packed tensors, or one slot pool)."""
    groups: dict[int, list[int]] = {}
    for b, s in enumerate(states):
        key = id(s.estimator.lease.pool) if isinstance(s.estimator, SlotCache) else 0
        groups.setdefault(key, []).append(b)
    return list(groups.values())


def _merged(groups: list[list[int]], run) -> tuple[list[torch.Tensor], list[FlowStreamState]]:
    """run(indices) → (mels, states) per group, reassembled in the original stream order."""
    total = sum(len(g) for g in groups)
    mels: list = [None] * total
    new_states: list = [None] * total
    for idx in groups:
        for b, mel, state in zip(idx, *run(idx)):
            mels[b], new_states[b] = mel, state
    return mels, new_states


def _takes_batch(model: FlowModel, ragged: bool) -> bool:
    """Whether the model's modules can run these streams as one batch. Ours take ragged batches;
    exported stand-ins (ONNX / TensorRT, `editx.export.backends`) run their own graphs: the DiT
    chunk graph has no key mask (equal shapes only), the encoder has no ragged chunk entry.
    Streams then run one by one: slower, same results."""
    return hasattr(model.encoder, "forward_chunk_ragged") and (not ragged or isinstance(model.decoder.estimator, DiT))


def _batch_size(**lists: Sequence) -> int:
    sizes = {name: len(x) for name, x in lists.items()}
    if len(set(sizes.values())) != 1 or min(sizes.values()) < 1:
        raise InvalidInputError(f"{', '.join(sizes)}: expected one entry per stream (at least one), got "
                                f"{', '.join(str(n) for n in sizes.values())}")
    return next(iter(sizes.values()))


def _right_padded_pairs(pairs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Token pairs `[1, T_b, 2]` → `[B, max T_b, 2]` (id 0 in the padding: embedded, then never read)."""
    out = pairs[0].new_zeros(len(pairs), max(p.shape[1] for p in pairs), 2)
    for b, p in enumerate(pairs):
        out[b, :p.shape[1]] = p[0].to(out.device)
    return out


def _right_padded_rows(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """`[1, C, T_b]` each → `[B, C, width]`, zeros after each row's frames."""
    out = rows[0].new_zeros(len(rows), rows[0].shape[1], width)
    for b, r in enumerate(rows):
        out[b, :, :r.shape[2]] = r[0]
    return out


def _noise_rows(model: FlowModel, noise: torch.Tensor, offsets: Sequence[int], frames: Sequence[int],
                width: int) -> torch.Tensor:
    """Each stream's ODE start noise `noise[:, :, offset_b : offset_b + frames_b]`, right-padded → `[B, 80, width]`.
    Checked as `slice_noise` checks it, with one finiteness test (one device sync) for the whole batch."""
    channels = model.cfg.output_size
    check_float(noise, "noise", (1, channels, None), finite=False)
    for off, n in zip(offsets, frames):
        if noise.shape[2] < off + n:
            slice_noise(noise, off, n, channels)  # raises its InvalidInputError
    rows = _right_padded_rows([noise[:, :, off:off + n] for off, n in zip(offsets, frames)], width)
    if not torch.isfinite(rows).all():
        for off, n in zip(offsets, frames):
            slice_noise(noise, off, n, channels)  # names the stream's non-finite frames
    return rows.to(model.device)


def _pack_estimator(caches: Sequence[EstimatorStreamCache]) -> EstimatorStreamCache:
    """Per-stream DiT caches (rows [cond; uncond], T_b frames) → one batch cache with rows
    [cond of every stream; uncond of every stream] and frames right-padded with zeros."""
    batch, width = len(caches), max(c.frames for c in caches)

    def pack(parts: Sequence[torch.Tensor], frame_dim: int | None) -> torch.Tensor:
        like = parts[0]  # [S, depth, 2, ...]
        shape = list(like.shape)
        if frame_dim is not None:
            shape[frame_dim] = width
        out = like.new_zeros(shape[:3] + [batch] + shape[3:])  # [S, depth, 2, B, ...]
        for b, part in enumerate(parts):
            target = out[:, :, :, b]
            if frame_dim is not None:
                target = target.narrow(frame_dim, 0, part.shape[frame_dim])
            target.copy_(part)
        return out.flatten(2, 3)  # [S, depth, 2B, ...]: row j·B + b

    return EstimatorStreamCache(k=pack([c.k for c in caches], 4), v=pack([c.v for c in caches], 4),
                                conv=pack([c.conv for c in caches], None))


def _unpack_estimator(cache: EstimatorStreamCache, b: int, batch: int, chunk_width: int, n_new: int, n_cached: int,
                      prompt_frames: int | None = None, left_context: int | None = None) -> EstimatorStreamCache:
    """Stream b's DiT cache out of a batch cache with frames [chunk, padded to chunk_width | cache, padded]:
    its n_new chunk frames then its n_cached cached frames; with prompt_frames / left_context
    truncated as `EstimatorStreamCache.truncated` does (newest left_context + the prompt)."""
    total = n_new + n_cached
    keep = [(0, total)]  # (start, length) in the stream's own frame order
    if prompt_frames is not None and total > prompt_frames + left_context:
        keep = [(0, left_context), (total - prompt_frames, prompt_frames)]
    spans = []  # the same frames as (start, length) in the padded batch layout
    for start, length in keep:
        end = start + length
        if start < n_new:
            spans.append((start, min(end, n_new) - start))
        if end > n_new:
            first = max(start, n_new)
            spans.append((first - n_new + chunk_width, end - first))

    def frames(x: torch.Tensor) -> torch.Tensor:
        rows = x[:, :, b::batch]  # rows b (conditional) and B + b (unconditional)
        return torch.cat([rows.narrow(4, s, n) for s, n in spans if n > 0], dim=4)

    return EstimatorStreamCache(k=frames(cache.k), v=frames(cache.v), conv=cache.conv[:, :, b::batch].clone())


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
