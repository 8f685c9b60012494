"""token2wav: mixed audio ids -> 24 kHz waveform (flow matching + HiFT), offline and streamed.

Upstream's `CosyVoice_stream_impl_` (spec §5, §6) keeps per-session caches on the model
object; here every stream's state lives in its own `Token2WavStream`, and the models
(`FlowModel`, `HiFTGenerator`) stay shared and read-only. `decode_batch` runs the pushes of
many streams together: their set-ups, flow chunks and HiFT calls as batched tensor ops.

Mixed ids are LLM ids − 65536: per 5-id group two vq02 codes (0..1023) then three
1024 + vq06 codes (spec §5.4).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..models.flow import FlowModel, reshape_mixed_tokens
from ..models.flow.dit import DiT
from ..models.flow.dit_slots import DiTSlots, SlotCache
from ..models.flow.streaming import (FlowStreamState, inference_chunk, inference_chunk_batch, next_stream_action,
                                     setup_stream, setup_stream_batch)
from ..models.flow.tokens import check_pair_ids
from ..models.hift import HiFTGenerator, HiFTStreamState, draw_nsf
from ..models.hift_stream import vocode_chunk_batch

log = logging.getLogger("editx")

# One NSF draw set per HiFT call: (call index, samples) -> (rand_ini, sine_noise) or None to sample.
DrawProvider = Callable[[int, int], Optional[tuple[torch.Tensor, torch.Tensor]]]


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """Round to bf16 precision and back to fp32 (upstream passes prompt mel / x-vector as bf16, spec §5)."""
    return x.detach().to(torch.bfloat16).to(torch.float32)


@dataclass(frozen=True)
class VoiceConditioning:
    """Decoder-side description of one voice (shared read-only by all its requests).

    prompt_mixed: [Np] int64 mixed ids of the prompt audio (vq0206 LLM ids − 65536).
    prompt_feat:  [1, T_mel, 80] float32 prompt log-mel, bf16-rounded.
    embedding:    [1, 192] float32 CAM++ x-vector, bf16-rounded.
    """

    prompt_mixed: torch.Tensor
    prompt_feat: torch.Tensor
    embedding: torch.Tensor

    @classmethod
    def from_features(cls, prompt_mixed, prompt_feat: torch.Tensor, embedding: torch.Tensor) -> "VoiceConditioning":
        """Build from raw front-end outputs, applying upstream's bf16 rounding."""
        mixed = torch.as_tensor(prompt_mixed, dtype=torch.long).reshape(-1)
        if mixed.numel() < 5:
            raise InvalidInputError("prompt audio yields fewer than 5 audio tokens (needs >= 0.12 s of speech)")
        return cls(mixed, bf16_round(prompt_feat), bf16_round(embedding))

    @property
    def prompt_pairs(self) -> torch.Tensor:
        """[1, Tp, 2] flow token pairs of the prompt."""
        return reshape_mixed_tokens(self.prompt_mixed)[None]


class Token2Wav:
    """The decoder stage: shared flow + HiFT models and the runtime's fixed start noise."""

    def __init__(self, flow: FlowModel, hift: HiFTGenerator, noise: torch.Tensor, n_timesteps: int = 10) -> None:
        # noise: [1, 80, N] fixed ODE start noise (upstream's rand_noise buffer, drawn once per process).
        self.flow, self.hift, self.noise, self.n_timesteps = flow, hift, noise, n_timesteps
        # Pool of streaming DiT caches (static-shape solves, CUDA graphs); None: packed caches only.
        # A shared resource like the LLM's KV pool: streams lease slots and give them back at the end.
        self.slots: Optional[DiTSlots] = None

    @property
    def device(self) -> torch.device:
        return self.flow.device

    def offline(self, mixed: torch.Tensor, voice: VoiceConditioning,
                generator: Optional[torch.Generator] = None,
                draws: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-streaming decode (upstream token2wav_nonstream).

        mixed: [N] int64 generated mixed ids. Returns (speech [N_out] float32, mel [1, 80, T_mel]).
        """
        mel = self.flow.inference_mixed(self._check_mixed(mixed), voice.prompt_mixed,
                                        voice.prompt_feat.to(self.device), voice.embedding.to(self.device),
                                        self.noise, self.n_timesteps)
        speech, _ = self.hift.inference(mel, draws=draws, generator=generator)
        return speech[0].float(), mel

    def stream(self, voice: VoiceConditioning, generator: Optional[torch.Generator] = None,
               draws: Optional[DrawProvider] = None, record: bool = False) -> "Token2WavStream":
        """A new per-request streaming decoder for `voice`."""
        return Token2WavStream(self, voice, generator, draws, record=record)

    def _check_mixed(self, mixed) -> torch.Tensor:
        ids = torch.as_tensor(mixed, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise InvalidInputError("no audio tokens to decode (the LLM produced none)")
        return ids


@dataclass(frozen=True)
class _Step:
    """One decoder action of a stream: the flow set-up on its first ids, or one chunk (flush if last)."""

    setup: bool
    ids: tuple[int, ...]
    last: bool = False

    def pairs(self) -> torch.Tensor:
        """[1, T, 2] flow token pairs of the step's ids (on the CPU)."""
        return reshape_mixed_tokens(torch.tensor(self.ids, dtype=torch.long))[None]


@dataclass(frozen=True)
class _Plan:
    """What one push does: its steps in order and the bookkeeping after them."""

    steps: tuple[_Step, ...]
    buffer: list[int]
    chunk_sizes: tuple[int, ...]
    last: bool


@dataclass
class Token2WavStream:
    """Per-request streaming decoder (upstream token2wav_stream, spec §6).

    `push(ids, last)` appends mixed ids and returns the waveform chunks they complete:
    set-up after the first 5 ids (prompt caches, no audio), then chunks of 15, 24, then
    48 token frames (+3 lookahead frames), and everything left on `last`.
    `decode_batch` does the pushes of several streams at once (batched flow and HiFT).
    """

    decoder: Token2Wav
    voice: VoiceConditioning
    generator: Optional[torch.Generator] = None
    draws: Optional[DrawProvider] = None
    buffer: list[int] = field(default_factory=list)
    flow_state: Optional[FlowStreamState] = None
    hift_state: Optional[HiFTStreamState] = None
    chunk_sizes: tuple[int, ...] = ()
    hift_calls: int = 0
    finished: bool = False
    # With `record`, every chunk's flow mel [1, 80, T] and NSF source [1, 1, n] are kept (tests, debugging).
    record: bool = False
    trace: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.decoder.flow.cfg
        self.chunk_sizes = tuple(cfg.chunk_sizes)
        self.hift_state = HiFTStreamState(mel_cache_len=cfg.mel_cache_len)

    def push(self, ids, last: bool = False) -> list[torch.Tensor]:
        """Append mixed ids; returns the finished waveform chunks ([n] float32 each, possibly none).

        Ids are taken one at a time with one planning decision each, exactly as upstream's
        one-id-per-call driver, so chunk boundaries do not depend on how ids are grouped into
        pushes. One deliberate difference: when the set-up lands on the very last id (a
        5-id output), upstream emits nothing; we flush those frames instead.
        """
        plan = self._plan(ids, last)
        out: list[torch.Tensor] = []
        for step in plan.steps:
            if step.setup:
                self._setup(step)
            else:
                out.append(self._run(step))
        self._commit(plan)
        return out

    # -- planning (pure: no model work, no state change) ---------------------------------
    def _plan(self, ids, last: bool) -> _Plan:
        if self.finished:
            raise InvalidInputError("stream already finished (push after last=True)")
        new = torch.as_tensor(ids, dtype=torch.long).reshape(-1).tolist()
        lookahead = self.decoder.flow.cfg.encoder.pre_lookahead_len
        buffer, sizes, ready = list(self.buffer), self.chunk_sizes, self.flow_state is not None
        steps: list[_Step] = []

        def act(is_last: bool) -> None:
            nonlocal sizes, ready
            action = next_stream_action(len(buffer), ready, sizes, is_last, lookahead)
            if action.kind == "wait":
                return
            if action.kind == "setup":
                steps.append(_Step(True, tuple(buffer[:action.take])))
                ready = True
                if is_last:  # our flush-instead-of-nothing (see push)
                    steps.append(_Step(False, tuple(buffer), last=True))
                    buffer.clear()
                return
            sizes = action.chunk_sizes
            steps.append(_Step(False, tuple(buffer[:action.take]), last=action.kind == "flush"))
            del buffer[:action.advance]

        for k, tok in enumerate(new):
            buffer.append(int(tok))
            act(last and k == len(new) - 1)
        if last and not new and ready and buffer:
            act(True)
        return _Plan(tuple(steps), buffer, sizes, bool(last))

    def _commit(self, plan: _Plan) -> None:
        self.buffer, self.chunk_sizes, self.finished = plan.buffer, plan.chunk_sizes, plan.last
        if self.finished:
            self._release_slot()

    def close(self) -> None:
        """End the stream early (cancelled request): its DiT cache slot goes back to the pool now."""
        self.finished = True
        self._release_slot()

    def _release_slot(self) -> None:
        cache = None if self.flow_state is None else self.flow_state.estimator
        if isinstance(cache, SlotCache):
            cache.lease.release()

    # -- single-stream execution ---------------------------------------------------------
    def _setup(self, step: _Step) -> None:
        d, v = self.decoder, self.voice
        if d.slots is not None:
            (self.flow_state,) = setup_stream_batch(d.flow, [v.prompt_pairs], [step.pairs()], [v.prompt_feat],
                                                    [v.embedding], d.noise, n_timesteps=d.n_timesteps, slots=d.slots)
            return
        self.flow_state = setup_stream(d.flow, v.prompt_pairs.to(d.device), step.pairs().to(d.device),
                                       v.prompt_feat.to(d.device), v.embedding.to(d.device), d.noise,
                                       n_timesteps=d.n_timesteps)

    def _run(self, step: _Step) -> torch.Tensor:
        d = self.decoder
        mel, self.flow_state = inference_chunk(d.flow, step.pairs().to(d.device), self.flow_state, step.last,
                                               d.noise)
        n_samples = self._hift_samples(mel)
        draws = self.draws(self.hift_calls, n_samples) if self.draws else None
        audio, self.hift_state, source = d.hift.vocode_chunk(mel, self.hift_state, last=step.last, draws=draws,
                                                             generator=self.generator, return_source=True)
        if self.record:
            self.trace.append((mel, source))
        self.hift_calls += 1
        return audio[0].float()

    def _hift_samples(self, mel: torch.Tensor, hift_state: Optional[HiFTStreamState] = None) -> int:
        """Samples of the HiFT call that vocodes `mel` [1, 80, T] (cached mel frames included)."""
        state = self.hift_state if hift_state is None else hift_state
        return (mel.shape[2] + (state.mel.shape[2] if state.started else 0)) * self.decoder.hift.config.upsample_scale

    def _nsf_draws(self, call: int, n_samples: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """This stream's NSF draws for HiFT call `call`: the provider's, else the numbers
        `HiFTGenerator.inference` would draw (from the stream's generator, or `device`'s default one).
        They stay on the generator's device: the batch moves them to the model once, not per stream."""
        draws = self.draws(call, n_samples) if self.draws else None
        if draws is None:
            where = self.generator.device if self.generator is not None else device
            draws = draw_nsf(1, n_samples, self.decoder.hift.config.n_harmonic_channels, where, self.generator)
        return draws


# Streams with slots by default on CUDA: 16, so a 16-stream chunk round is one graph replay (a round
# that mixes pooled and packed streams also runs an eager packed solve, ~250 ms on an H200) ...
AUTO_DECODER_SLOTS = 16
AUTO_SLOT_MEMORY_SHARE = 0.30  # ... as long as the pool takes at most this share of free device memory
# (an 80 GB card with the bf16 LLM and a 4 GiB KV pool loaded has ~65 GB free: 16 x 1.05 GB fits)


def decoder_slots(flow: FlowModel, config) -> Optional[DiTSlots]:
    """The runtime's DiT slot pool from `RuntimeConfig` (decoder_slots, decoder_slot_prompt_frames,
    n_timesteps, cuda_graphs), or None when disabled or the DiT runs as an exported graph."""
    if config.decoder_slots == 0 or (config.decoder_slots is None and flow.device.type != "cuda"):
        return None
    if not isinstance(flow.decoder.estimator, DiT):
        log.info("decoder_slots: the DiT runs as an exported graph; streams keep packed caches")
        return None
    streams = config.decoder_slots
    if streams is None:
        streams = _auto_slot_streams(flow, config.n_timesteps, config.decoder_slot_prompt_frames)
        if streams == 0:
            return None
    mode = "cuda" if flow.device.type == "cuda" and config.cuda_graphs else "static"
    slots = DiTSlots.for_flow(flow, config.n_timesteps, streams, config.decoder_slot_prompt_frames, mode)
    log.info("decoder slot pool: %d streams x %d frames, %.2f GiB (%s)", slots.streams, slots.frames,
             slots.nbytes / 2**30, mode)
    return slots


def _auto_slot_streams(flow: FlowModel, n_timesteps: int, prompt_frames: int) -> int:
    """AUTO_DECODER_SLOTS, or as many as fit in AUTO_SLOT_MEMORY_SHARE of the free device memory."""
    per_stream = DiTSlots.stream_bytes(flow, n_timesteps, prompt_frames)
    free, _ = torch.cuda.mem_get_info(flow.device)
    streams = min(AUTO_DECODER_SLOTS, int(AUTO_SLOT_MEMORY_SHARE * free / per_stream) - 1)  # -1: scratch slot
    if streams < AUTO_DECODER_SLOTS:
        log.warning("decoder_slots: %d streams fit in %.0f%% of the free %.1f GiB (%.2f GiB each)%s",
                    max(streams, 0), 100 * AUTO_SLOT_MEMORY_SHARE, free / 2**30, per_stream / 2**30,
                    "" if streams > 0 else "; streams keep packed caches")
    return max(streams, 0)


# =======================================================================================
# Several streams at once
# =======================================================================================
WorkItem = tuple[Token2WavStream, list[int], bool]  # (stream, new mixed ids, last)


@dataclass
class _Pending:
    """One `decode_batch` entry while it runs: the stream's tentative state (committed at the end)."""

    index: int
    stream: Token2WavStream
    plan: _Plan
    flow_state: Optional[FlowStreamState]
    hift_state: HiFTStreamState
    hift_calls: int
    chunks: list[torch.Tensor] = field(default_factory=list)
    trace: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    draws: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # this round's NSF draws, kept for a retry
    error: Optional[BaseException] = None


def decode_batch(work: Sequence[WorkItem], return_exceptions: bool = False) -> list:
    """Run `stream.push(ids, last)` for several different streams, batching their model work.

    work: `(stream, ids, last)` per stream (each stream at most once). Returns, per entry, the
    waveform chunks `stream.push(ids, last)` would return (same count and lengths, samples equal
    up to floating-point reduction order) and leaves every stream in the state push would.

    Each stream's pushes become a sequence of steps (set-up, chunks); step r of every stream
    runs in round r: the set-ups of one decoder as one ragged `setup_stream_batch`, the chunks
    of one decoder as one ragged `inference_chunk_batch` followed by `vocode_chunk_batch`.
    NSF draws come from each stream's own provider / generator, in its own call order.

    Errors: with `return_exceptions=False` the first error is raised and no stream is changed
    (a stream's generator may have advanced). With `return_exceptions=True` a failing entry
    gets its exception in its slot and its stream is left unchanged; a batched group that
    fails is retried one stream at a time, so one bad stream never fails the others.
    """
    results: list = [None] * len(work)
    pending: list[_Pending] = []
    seen: set[int] = set()
    for i, item in enumerate(work):
        try:
            pending.append(_pending_entry(i, item, seen))
        except Exception as exc:
            if not return_exceptions:
                raise
            results[i] = exc

    for r in range(max((len(p.plan.steps) for p in pending), default=0)):
        live = [p for p in pending if p.error is None and r < len(p.plan.steps)]
        setups = _grouped([p for p in live if p.plan.steps[r].setup], lambda p: id(p.stream.decoder))
        chunks = _grouped([p for p in live if not p.plan.steps[r].setup],
                          lambda p: (id(p.stream.decoder), p.flow_state.n_timesteps))
        for group in setups:
            _run_isolated(_setup_group, group, r, return_exceptions)
        for group in chunks:
            _run_isolated(_chunk_group, group, r, return_exceptions)

    for p in pending:
        if p.error is not None:
            results[p.index] = p.error
            _drop_tentative_slot(p)
            continue
        s = p.stream
        s.flow_state, s.hift_state, s.hift_calls = p.flow_state, p.hift_state, p.hift_calls
        if s.record:
            s.trace.extend(p.trace)
        s._commit(p.plan)
        results[p.index] = p.chunks
    return results


def _drop_tentative_slot(p: _Pending) -> None:
    """A failed entry whose set-up ran in this batch leased a slot its stream never sees: free it."""
    fresh = p.flow_state is not None and p.stream.flow_state is None
    if fresh and isinstance(p.flow_state.estimator, SlotCache):
        p.flow_state.estimator.lease.release()


def _pending_entry(i: int, item: object, seen: set[int]) -> _Pending:
    """Check and plan one work entry (no state changes)."""
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise InvalidInputError(f"work[{i}]: expected (stream, ids, last), got {type(item).__name__}")
    stream, ids, last = item
    if not isinstance(stream, Token2WavStream):
        raise InvalidInputError(f"work[{i}]: expected a Token2WavStream, got {type(stream).__name__}")
    if id(stream) in seen:
        raise InvalidInputError(f"work[{i}]: this stream is already in the batch (one entry per stream)")
    seen.add(id(stream))
    plan = stream._plan(ids, bool(last))
    vocab = stream.decoder.flow.cfg.vocab_size
    for k, step in enumerate(plan.steps):  # bad ids fail their own entry here, never the batch
        check_pair_ids(step.pairs(), vocab, f"work[{i}] ids (step {k})", allow_negative=False)
    return _Pending(i, stream, plan, stream.flow_state, stream.hift_state, stream.hift_calls)


def _grouped(items: list[_Pending], key) -> list[list[_Pending]]:
    groups: dict = {}
    for p in items:
        groups.setdefault(key(p), []).append(p)
    return list(groups.values())


def _run_isolated(run, group: list[_Pending], r: int, return_exceptions: bool) -> None:
    """run(group, r) as one batch; on failure (with return_exceptions) retry each entry alone."""
    try:
        run(group, r)
    except Exception as exc:
        if not return_exceptions:
            raise
        if len(group) == 1:
            group[0].error = exc
            return
        for p in group:
            try:
                run([p], r)
            except Exception as single:
                p.error = single


def _setup_group(group: list[_Pending], r: int) -> None:
    """Round r's set-ups of streams sharing one decoder, as one ragged batch."""
    d = group[0].stream.decoder
    voices = [p.stream.voice for p in group]
    states = setup_stream_batch(
        d.flow, [v.prompt_pairs for v in voices], [p.plan.steps[r].pairs() for p in group],
        [v.prompt_feat for v in voices], [v.embedding for v in voices], d.noise, n_timesteps=d.n_timesteps,
        slots=d.slots)
    for p, state in zip(group, states):
        p.flow_state = state


def _chunk_group(group: list[_Pending], r: int) -> None:
    """Round r's chunks of streams sharing one decoder: one ragged flow batch, then HiFT by shape."""
    d = group[0].stream.decoder
    steps = [p.plan.steps[r] for p in group]
    mels, flow_states = inference_chunk_batch(d.flow, [s.pairs() for s in steps], [p.flow_state for p in group],
                                              [s.last for s in steps], d.noise)
    for p, mel in zip(group, mels):
        if p.draws is None:  # drawn once per round: a retry after a failed batch reuses them
            p.draws = p.stream._nsf_draws(p.hift_calls, p.stream._hift_samples(mel, p.hift_state), mel.device)
    vocoded = vocode_chunk_batch(d.hift, mels, [p.hift_state for p in group], [s.last for s in steps],
                                 [p.draws for p in group])
    for p, mel, flow_state, (audio, hift_state, source) in zip(group, mels, flow_states, vocoded):
        p.flow_state, p.hift_state, p.draws = flow_state, hift_state, None
        p.hift_calls += 1
        p.chunks.append(audio[0].float())
        if p.stream.record:
            p.trace.append((mel, source))


def to_numpy(audio: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(audio.detach().float().cpu().numpy().reshape(-1), dtype=np.float32)
