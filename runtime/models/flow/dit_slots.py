"""Streaming DiT caches in a preallocated slot pool: the ODE solve of a set-up or chunk with
static shapes, replayable from CUDA graphs.

Why: the dynamic path (`cfm.solve_chunk`) concatenates each chunk's keys/values onto the
stream's cache tensors, so every shape changes per chunk and nothing can be graphed. Eager,
one 10-step solve is ~4,000 small kernels (16 blocks x 10 steps x CFG): on an H200 the offline
flow took 237 ms for 4.8 s of audio, launch-bound, and a stream pays it twice before its first
audio (set-up + first chunk).

Layout: k, v `[n_steps, depth, rows, F, H, hd]`; stream slot s owns rows 2s (conditional) and
2s+1 (unconditional); the last slot is scratch for batch padding. Frames [0, P) of a row hold the
prompt (written by the set-up), frames [P, P+R) are a ring for the chunks. A solve writes this
call's keys/values into the pool first, then every row attends over its whole row through a key
mask of the frames it may see, so shapes depend only on (batch bucket, width bucket).

Cache semantics equal the dynamic path's: after a chunk the cache is [this chunk, older kept
frames, prompt] truncated to its first `left_context` non-prompt entries (`SlotCache.segments`
records that order). Attention has no positional encoding (see dit.py), so only the summation
order differs from the dynamic path. The ring holds R = left_context + 2·max_chunk frames: kept
frames lie in the last left_context + max_chunk written positions, so a new chunk's writes
(≤ max_chunk, padding included) never touch them — the previous state stays valid after a solve
(a failed batch can be retried from it), but one state cannot seed two continuations.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ...errors import InvalidInputError
from ..cuda_graph import capture_graph
from .cfm import CausalConditionalCFM, EstimatorStreamCache
from .dit import DiT
from .dit_pool import SlotIO, solve_on_pool

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16)
log = logging.getLogger("editx")


class SlotLease:
    """One stream's claim on slot `slot` of `pool`; released once (explicitly, or when garbage)."""

    def __init__(self, pool: "DiTSlots", slot: int) -> None:
        self.pool, self.slot = pool, slot
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def rows(self) -> tuple[int, int]:
        """(conditional row, unconditional row) of the pool."""
        return 2 * self.slot, 2 * self.slot + 1

    def release(self) -> None:
        self.pool._release(self)

    def __del__(self) -> None:  # a stream dropped without close() must not leak its slot
        try:
            self.release()
        except Exception:
            pass


@dataclass(frozen=True)
class SlotCache:
    """The DiT cache of one stream whose keys/values live in a pool slot (`EstimatorStreamCache`'s
    stand-in in `FlowStreamState`).

    segments: kept ring frames as (ring offset, length) runs in cache order (newest chunk first,
    each chunk in time order); head: ring offset of the next chunk's first frame; conv
    `[n_steps, depth, 2, 2, C, 2]` the causal-conv caches (rows [cond, uncond]).
    """

    lease: SlotLease
    prompt_frames: int
    head: int
    segments: tuple[tuple[int, int], ...]
    conv: torch.Tensor

    @property
    def frames(self) -> int:
        """Cached mel frames (prompt + kept context): the noise offset of the next chunk."""
        return self.prompt_frames + sum(n for _, n in self.segments)

    def ring_frames(self) -> list[int]:
        """Pool frame index of every kept ring frame, in cache order."""
        pool = self.lease.pool
        return [pool.prompt_capacity + (start + i) % pool.ring for start, n in self.segments for i in range(n)]

    def after_chunk(self, n_new: int, conv: torch.Tensor, left_context: int) -> "SlotCache":
        """The cache once a chunk of n_new frames (written at `head`) is prepended and the
        non-prompt part truncated to its first `left_context` entries."""
        runs = ((self.head, n_new), *self.segments)
        if sum(n for _, n in runs) > left_context:  # keep the first left_context entries (upstream)
            kept, room = [], left_context
            for start, n in runs:
                if room > 0:
                    kept.append((start, min(n, room)))
                    room -= min(n, room)
            runs = tuple(kept)
        ring = self.lease.pool.ring
        return SlotCache(self.lease, self.prompt_frames, (self.head + n_new) % ring, runs, conv)

    def materialize(self) -> EstimatorStreamCache:
        """The same cache as packed tensors in the dynamic layout (tests, debugging): k, v
        `[n_steps, depth, 2, H, T, hd]` with frames [kept ring frames | prompt]."""
        pool = self.lease.pool
        frames = torch.tensor(self.ring_frames() + list(range(self.prompt_frames)), device=pool.k.device)
        rows = torch.tensor(self.lease.rows, device=pool.k.device)

        def take(x: torch.Tensor) -> torch.Tensor:  # [S, depth, rows, F, H, hd] → [S, depth, 2, H, T, hd]
            return x.index_select(2, rows).index_select(3, frames).transpose(3, 4).contiguous()

        return EstimatorStreamCache(k=take(pool.k), v=take(pool.v), conv=self.conv)


@dataclass(frozen=True)
class SlotRow:
    """One stream's part of a solve: its lease; `ring` (a chunk: frame j goes to ring offset
    head + j) or not (the set-up: frame j goes to prompt frame j); n_valid frames of this call; the
    cache it attends to: prompt frames [0, prompt) and the pool frames `ring_frames`; conv
    `[n_steps, depth, 2, 2, C, 2]` or None (zeros)."""

    lease: SlotLease
    ring: bool
    head: int
    n_valid: int
    prompt: int
    ring_frames: tuple[int, ...]
    conv: Optional[torch.Tensor]


class _Static:
    """The input/output buffers of one (batch bucket, width bucket) solve; graphs read them in place."""

    def __init__(self, slots: "DiTSlots", batch: int, width: int) -> None:
        dev, dt, cfg = slots.device, slots.dtype, slots.dit.cfg
        self.batch, self.width = batch, width
        channels = cfg.out_channels
        self.mu = torch.zeros(batch, channels, width, device=dev, dtype=dt)
        self.cond = torch.zeros(batch, channels, width, device=dev, dtype=dt)
        self.x0 = torch.zeros(batch, channels, width, device=dev, dtype=torch.float32)
        self.spks = torch.zeros(batch, channels, device=dev, dtype=dt)
        self.conv = torch.zeros(slots.n_steps, cfg.depth, 2 * batch, 2, cfg.hidden_size, 2, device=dev, dtype=dt)
        self.io = SlotIO(rows=torch.zeros(2 * batch, dtype=torch.long, device=dev),
                          write=torch.zeros(2 * batch * width, dtype=torch.long, device=dev),
                          mask=torch.zeros(2 * batch, 1, 1, slots.frames, dtype=torch.bool, device=dev),
                          n_valid=torch.full((2 * batch,), width, dtype=torch.long, device=dev))


class DiTSlots:
    """A pool of streaming DiT caches for `streams` concurrent streams, and the static-shape solve.

    cfm: the flow's `CausalConditionalCFM` (its `estimator` must be our DiT); n_timesteps: ODE steps
    (the pool keeps one cache per step); prompt_capacity: prompt mel frames a slot holds (longer
    prompts use the dynamic path); left_context: kept non-prompt frames (flow config
    `stream_att_left_context`); max_chunk: widest chunk in mel frames (a flush included).
    chunk_widths: extra width buckets (the chunk sizes in mel frames).
    mode "static" runs the solve eagerly over the static buffers (CPU, tests); "cuda" replays one
    CUDA graph per (batch bucket, width bucket), captured the first time it is needed.
    Memory: 2 · n_steps · depth · H · hd · (prompt_capacity + left_context + 2·max_chunk) values per
    stream (+1 scratch stream): 1.31 MB per frame per stream with the real shapes in fp32.
    """

    def __init__(self, cfm: CausalConditionalCFM, n_timesteps: int, streams: int, prompt_capacity: int,
                 left_context: int, max_chunk: int, mode: str = "static",
                 batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS, width_step: int = 32,
                 chunk_widths: Sequence[int] = ()) -> None:
        if not isinstance(cfm.estimator, DiT):
            raise InvalidInputError("DiTSlots: the flow's estimator is not the PyTorch DiT (exported graphs "
                                    "run their own shapes)")
        if mode not in ("static", "cuda"):
            raise InvalidInputError(f"DiTSlots: mode {mode!r}; use 'static' or 'cuda'")
        for name, value in (("n_timesteps", n_timesteps), ("streams", streams), ("prompt_capacity", prompt_capacity),
                            ("left_context", left_context), ("max_chunk", max_chunk), ("width_step", width_step)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"DiTSlots: {name} must be a positive int, got {value!r}")
        self.cfm, self.dit = cfm, cfm.estimator
        self.device, self.dtype = self.dit.in_proj.weight.device, self.dit.in_proj.weight.dtype
        if mode == "cuda" and self.device.type != "cuda":
            raise InvalidInputError("DiTSlots: CUDA graphs need the flow on a CUDA device")
        self.mode, self.n_steps, self.streams = mode, n_timesteps, streams
        self.prompt_capacity, self.left_context, self.max_chunk = prompt_capacity, left_context, max_chunk
        self.ring = left_context + 2 * max_chunk
        self.frames = prompt_capacity + self.ring
        self.batch_buckets = tuple(sorted({b for b in batch_buckets if 0 < b < streams} | {streams}))
        # Width buckets: every width_step frames, plus the exact chunk widths (so the regular 30/48/96-frame
        # chunks run unpadded) and the two limits.
        self.chunk_widths = tuple(sorted({w for w in chunk_widths if 0 < w <= max_chunk} | {max_chunk}))
        self.widths = tuple(sorted(set(range(width_step, max(prompt_capacity, max_chunk), width_step))
                                   | {prompt_capacity} | set(self.chunk_widths)))
        cfg = self.dit.cfg
        shape = (n_timesteps, cfg.depth, 2 * (streams + 1), self.frames, cfg.num_heads, cfg.head_dim)
        with torch.inference_mode():
            self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
            self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.scratch = streams
        self._free = list(range(streams - 1, -1, -1))
        self._lock = threading.Lock()  # slot list
        self._solve_lock = threading.Lock()  # static buffers
        self._static: dict[tuple[int, int], _Static] = {}
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._graph_pool = None
        self._last_stream = None  # CUDA stream of the latest solve
        self.solves = 0  # solves run over the pool (set-ups + chunk batches), for stats
        self.graph_error: Optional[str] = None  # why CUDA graphs were given up, if they were

    @classmethod
    def for_flow(cls, flow, n_timesteps: int, streams: int, prompt_capacity: int, mode: str = "static") -> "DiTSlots":
        """A pool sized for a `FlowModel`'s streaming scheme: its left context, its widest chunk (a
        flush: one id short of the largest chunk + lookahead) and its chunk widths as buckets."""
        left_context, widest, chunk_widths = _flow_geometry(flow.cfg)
        return cls(flow.decoder, n_timesteps, streams, prompt_capacity, left_context, widest, mode=mode,
                   chunk_widths=chunk_widths)

    @staticmethod
    def stream_bytes(flow, n_timesteps: int, prompt_capacity: int) -> int:
        """Bytes one stream's slot takes in a `for_flow` pool (K and V, conditional + unconditional rows)."""
        left_context, widest, _ = _flow_geometry(flow.cfg)
        dit = flow.cfg.dit
        frames = prompt_capacity + left_context + 2 * widest  # prompt region + ring, as __init__ lays it out
        return 2 * 2 * n_timesteps * dit.depth * frames * dit.num_heads * dit.head_dim * flow.dtype.itemsize

    # -- slots -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)

    @property
    def captured(self) -> list[tuple[int, int]]:
        """(batch bucket, width bucket) pairs with a CUDA graph."""
        return sorted(self._graphs)

    def acquire(self, n: int) -> Optional[list[SlotLease]]:
        """n leases at once, or None (and nothing taken) when fewer slots are free."""
        with self._lock:
            if len(self._free) < n:
                return None
            return [SlotLease(self, self._free.pop()) for _ in range(n)]

    def _release(self, lease: SlotLease) -> None:
        with self._lock:
            if not lease._released:
                lease._released = True
                self._free.append(lease.slot)

    def fits(self, n_timesteps: int, left_context: int, prompt_frames: Sequence[int]) -> bool:
        """Whether streams with these settings can live in this pool."""
        return (n_timesteps == self.n_steps and left_context == self.left_context
                and max(prompt_frames) <= self.prompt_capacity)

    # -- solve -------------------------------------------------------------------------
    @torch.inference_mode()
    def solve(self, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor, x0: torch.Tensor,
              rows: Sequence[SlotRow]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The ODE solve of B streams' set-ups or chunks over the pool.

        mu, cond `[B, 80, W]`, x0 `[B, 80, W]` (right-padded per row to rows[b].n_valid frames),
        spks `[B, 80]`. Writes every row's keys/values into its slot. Returns (x `[B, 80, W]` float32,
        per row its new conv cache `[n_steps, depth, 2, 2, C, 2]`).
        """
        batch, width = mu.shape[0], mu.shape[2]
        for b, row in enumerate(rows):
            self._check_row(row, b, width)
        if len({row.ring for row in rows}) > 1:
            raise InvalidInputError("DiTSlots.solve: set-ups and chunks run in separate solves")
        bucket_b = next((b for b in self.batch_buckets if b >= batch), None)
        limit = self.max_chunk if rows[0].ring else self.prompt_capacity
        bucket_w = next((w for w in self.widths if w >= width), None)
        if bucket_b is None or bucket_w is None or bucket_w > limit or len(rows) != batch:
            raise InvalidInputError(f"DiTSlots.solve: {batch} rows x {width} frames do not fit the pool "
                                    f"({self.streams} streams, widths up to {limit})")
        with self._solve_lock:
            self._follow_last_stream()
            static = self._static.get((bucket_b, bucket_w)) or self._make_static(bucket_b, bucket_w)
            self._load(static, mu, spks, cond, x0, rows)
            self.solves += 1
            entry = None
            if self.mode == "cuda":
                entry = self._graphs.get((bucket_b, bucket_w)) or self._capture(static)
            if entry is None:
                x, conv = self._step(static)
            else:
                graph, (x, conv) = entry
                graph.replay()
            pick = torch.tensor([[b, bucket_b + b] for b in range(batch)], device=self.device)
            convs = [conv.index_select(2, pick[b]) for b in range(batch)]  # copies: the buffer is reused
            return x[:batch, :, :width].clone(), convs

    def warmup(self, report: Optional[Callable[[str], None]] = None) -> int:
        """Run every chunk bucket (each batch bucket x the chunk widths) and the single-stream set-up
        buckets once, so their CUDA graphs are captured before traffic (each capture records ~4,000
        kernels with the real shapes) — requests then never pay a capture. Uses free slots only
        (garbage written there is never visible: a stream writes each frame before it attends to
        it). Returns the number of solves run; `report` gets progress lines."""
        plans = [(True, b, w) for b in self.batch_buckets for w in self.chunk_widths]
        plans += [(False, 1, w) for w in self.widths if w <= self.prompt_capacity]
        done = 0
        for k, (ring, batch, width) in enumerate(plans):
            leases = self.acquire(batch)
            if leases is None:
                continue
            try:
                zeros = torch.zeros(batch, self.dit.cfg.out_channels, width, device=self.device)
                rows = [SlotRow(lease, ring, 0, width, 0, (), None) for lease in leases]
                self.solve(zeros, zeros[:, :, 0], zeros, zeros, rows)
                done += 1
            finally:
                for lease in leases:
                    lease.release()
            if report is not None and (k + 1) % 8 == 0:
                report(f"DiT slot pool warm-up: {k + 1}/{len(plans)} buckets")
        return done

    def _follow_last_stream(self) -> None:
        """On CUDA, order this solve after the previous one when it ran on another stream (a warm-up
        on the caller's stream, then the decoder worker's): both use the same static buffers."""
        if self.device.type != "cuda":
            return
        current = torch.cuda.current_stream(self.device)
        if self._last_stream is not None and self._last_stream != current:
            current.wait_stream(self._last_stream)
        self._last_stream = current

    def _check_row(self, row: SlotRow, b: int, width: int) -> None:
        if row.lease.pool is not self or row.lease.released:
            raise InvalidInputError(f"rows[{b}]: its slot lease is released or belongs to another pool")
        if not 0 < row.n_valid <= width:
            raise InvalidInputError(f"rows[{b}]: n_valid {row.n_valid} outside 1..{width}")

    def _make_static(self, batch: int, width: int) -> _Static:
        with torch.inference_mode():
            static = _Static(self, batch, width)
        self._static[(batch, width)] = static
        return static

    def _load(self, st: _Static, mu, spks, cond, x0, rows: Sequence[SlotRow]) -> None:
        """Copy this solve's inputs into the bucket's buffers; padding rows use the scratch slot."""
        batch, width = mu.shape[0], mu.shape[2]
        for dst, src in ((st.mu, mu), (st.cond, cond), (st.x0, x0)):
            dst.zero_()
            dst[:batch, :, :width].copy_(src)
        st.spks.zero_()
        st.spks[:batch].copy_(spks)
        st.conv.zero_()
        for b, row in enumerate(rows):
            if row.conv is not None:
                st.conv[:, :, b].copy_(row.conv[:, :, 0])
                st.conv[:, :, st.batch + b].copy_(row.conv[:, :, 1])
        io = _host_io(self, st.batch, st.width, rows)
        for name, value in io.items():
            getattr(st.io, name).copy_(torch.from_numpy(value))

    def _step(self, st: _Static) -> tuple[torch.Tensor, torch.Tensor]:
        return solve_on_pool(self.cfm, st.mu, st.spks, st.cond, st.x0, self.n_steps, self.k, self.v, st.io, st.conv)

    def _capture(self, st: _Static):
        """Record this bucket's solve; if capturing fails, log it and run eagerly from now on (same
        results, slower: `graph_error` and `captured` in the engine stats tell)."""
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        try:
            # The decoder worker captures while the engine thread keeps stepping the LLM (thread_local mode).
            entry = capture_graph(partial(self._step, st), self.device, self._graph_pool, thread_local=True)
        except Exception as exc:
            log.warning("DiT slot pool: CUDA-graph capture of bucket (%d streams, %d frames) failed, running "
                        "eagerly from now on: %r", st.batch, st.width, exc)
            self.mode, self.graph_error = "static", repr(exc)
            return None
        self._graphs[(st.batch, st.width)] = entry
        return entry


def _flow_geometry(cfg) -> tuple[int, int, list[int]]:
    """(left context, widest chunk, chunk widths) in mel frames of a flow config's streaming scheme."""
    widest = cfg.token_mel_ratio * (max(cfg.chunk_sizes) + cfg.encoder.pre_lookahead_len)
    return cfg.stream_att_left_context, widest, [cfg.token_mel_ratio * c for c in cfg.chunk_sizes]


def _host_io(slots: DiTSlots, batch: int, width: int, rows: Sequence[SlotRow]) -> dict[str, np.ndarray]:
    """Row indices, flat write targets, key masks and valid lengths of a padded batch (host arrays)."""
    frames, total = slots.frames, 2 * batch
    scratch = slots.scratch
    row_ids = np.empty(total, np.int64)
    write = np.empty((total, width), np.int64)
    mask = np.zeros((total, slots.frames), bool)
    n_valid = np.full(total, width, np.int64)
    j = np.arange(width)
    for b in range(batch):
        row = rows[b] if b < len(rows) else None
        if row is None:  # batch padding: scratch rows write and read their own first `width` frames
            pool_rows, targets, seen, prompt, valid = (2 * scratch, 2 * scratch + 1), j, j, 0, width
        else:
            pool_rows = row.lease.rows
            targets = slots.prompt_capacity + (row.head + j) % slots.ring if row.ring else j
            seen = np.concatenate([targets[:row.n_valid], np.asarray(row.ring_frames, np.int64)])
            prompt, valid = row.prompt, row.n_valid
        for half, pool_row in enumerate(pool_rows):  # [conditional rows; unconditional rows]
            r = half * batch + b
            row_ids[r], n_valid[r] = pool_row, valid
            write[r] = pool_row * frames + targets
            mask[r, :prompt] = True
            mask[r, seen] = True
    return {"rows": row_ids, "write": write.reshape(-1), "mask": mask.reshape(total, 1, 1, frames),
            "n_valid": n_valid}
