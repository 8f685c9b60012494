"""Decode-step runners for the Step1 LLM: eager, or CUDA-graphed with static buffers.

A decode step (one new token per row) is ~400 small kernels for the 32-layer model; at
batch 1 eager PyTorch is launch-bound (131 tok/s measured on an H200 vs 317 tok/s with a
graph, spec/performance.md). `GraphedDecoder` records the step once per (batch, attention
width bucket) and replays it. Everything a replay reads or writes lives at fixed
addresses: the token/position input buffers, the KV cache (owned by the runner and reused
by every request it serves) and the logits output buffer.

Capture happens lazily, the first time a bucket is needed, with the step's real inputs in
the buffers: warm-up and capture then write exactly the K/V the step itself writes (same
token, same slot), so capturing mid-generation is harmless.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import InvalidInputError
from ..models.cuda_graph import capture_graph
from .kv_cache import KVCache

DecodeStep = Callable[[torch.Tensor, KVCache, torch.Tensor, int], torch.Tensor]


def eager_decode_step(model) -> DecodeStep:
    """A plain decode step: ids [B, 1], cache, positions [B], key_len -> logits [B, V] fp32."""

    def step(ids: torch.Tensor, cache: KVCache, positions: torch.Tensor, key_len: int) -> torch.Tensor:
        return model(ids, cache, positions, attend_len=key_len)[:, -1].float()

    return step


class GraphedDecoder:
    """CUDA-graph decode for a fixed batch size over a runner-owned KV cache.

    Use `cache` for the request's prefill and `step` as `generate(..., decode_step=...)`.
    One request at a time per runner (`lock`): the cache and buffers are shared state.
    With `use_graphs=False` it runs the same static-buffer code eagerly (CPU tests).
    """

    def __init__(self, model, batch: int, capacity: int, use_graphs: Optional[bool] = None) -> None:
        if batch < 1 or capacity < 2:
            raise InvalidInputError(f"GraphedDecoder: batch {batch} / capacity {capacity} must be positive")
        self.model = model
        self.use_graphs = (model.device.type == "cuda") if use_graphs is None else use_graphs
        if self.use_graphs and model.device.type != "cuda":
            raise InvalidInputError("GraphedDecoder: CUDA graphs need the model on a CUDA device")
        self.cache = KVCache.for_model(model, batch, capacity)
        dev = model.device
        self._ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self._pos = torch.zeros(batch, dtype=torch.long, device=dev)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self.lock = threading.Lock()
        model.slopes(dev)  # the slope copy must exist before any capture (it allocates)

    @property
    def batch(self) -> int:
        return self.cache.batch

    @property
    def captured_buckets(self) -> list[int]:
        return sorted(self._graphs)

    def step(self, ids: torch.Tensor, cache: KVCache, positions: torch.Tensor, key_len: int) -> torch.Tensor:
        """Decode step with the `DecodeStep` signature; `cache` must be this runner's cache."""
        if cache is not self.cache:
            raise InvalidInputError("GraphedDecoder.step: the request must use the runner's own cache")
        self._ids.copy_(ids.view(self.batch, 1))
        self._pos.copy_(positions)
        if not self.use_graphs:
            return self.model(self._ids, self.cache, self._pos, attend_len=key_len)[:, -1].float()
        graph, out = self._graphs.get(key_len) or self._capture(key_len)
        graph.replay()
        return out

    def _capture(self, key_len: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        step = lambda: self.model(self._ids, self.cache, self._pos, attend_len=key_len)[:, -1].float()  # noqa: E731
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        self._graphs[key_len] = capture_graph(step, self.model.device, self._pool)
        return self._graphs[key_len]


# ---------------------------------------------------------------------------------------
# Continuous batching: decode-only engine steps over the paged pool, one graph per batch bucket.
# ---------------------------------------------------------------------------------------
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class PagedDecodeGraphs:
    """Decode-only steps of the streaming engine over the paged KV pool, replayed from CUDA graphs.

    A step with S decoding sequences (and no prefill) runs in the smallest bucket B ≥ S; rows
    S..B−1 are padding that reads and writes only `scratch_block`, a pool block the scheduler
    never hands out. Every input lives in a static buffer of its bucket: ids, positions, slot
    mapping, block tables (full width, `max_blocks` = max_model_len / block_size), sequence
    lengths. The attention must be graph-capturable (the Triton paged kernel; the reference
    path syncs with the host), so `mode="cuda"` is only chosen when it is; `mode="static"` runs
    the same buffers eagerly (tests on CPU).
    """

    def __init__(self, model, cache, max_blocks: int, scratch_block: int, max_seqs: int, mode: str,
                 attention_backend: str = "auto", buckets: tuple[int, ...] = DEFAULT_BUCKETS,
                 capture_lock: Optional[threading.Lock] = None,
                 vocab_ranges: Optional[list[tuple[int, int]]] = None) -> None:
        if mode not in ("static", "cuda"):
            raise InvalidInputError(f"PagedDecodeGraphs: mode {mode!r}; use 'static' or 'cuda'")
        if mode == "cuda" and model.device.type != "cuda":
            raise InvalidInputError("PagedDecodeGraphs: CUDA graphs need the model on a CUDA device")
        self.model, self.cache, self.mode, self.backend = model, cache, mode, attention_backend
        self.vocab_ranges = vocab_ranges  # only those ids' logits: [B, n] (Step1Model.logits_for_ranges)
        self.max_blocks, self.scratch = max_blocks, scratch_block
        self.buckets = tuple(b for b in buckets if b < max_seqs) + (max_seqs,)
        self._static: dict[int, "_PagedStatic"] = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        # Taken around a capture: another thread launching device work meanwhile (the engine's
        # decoder worker) would invalidate it.
        self._capture_lock = capture_lock or threading.Lock()
        model.slopes(model.device)

    @property
    def captured_buckets(self) -> list[int]:
        """Batch buckets with a CUDA graph."""
        return sorted(self._graphs)

    def bucket(self, n_seqs: int) -> Optional[int]:
        return next((b for b in self.buckets if b >= n_seqs), None)

    def run(self, chunks) -> torch.Tensor:
        """chunks: one `SequenceChunk` per decoding sequence (one token each) -> logits [S, V]."""
        n = len(chunks)
        bucket = self.bucket(n)
        if bucket is None or any(len(c.token_ids) != 1 for c in chunks):
            raise InvalidInputError(f"PagedDecodeGraphs.run: {n} one-token sequences do not fit the buckets")
        static = self._static.get(bucket) or self._make_static(bucket)
        static.load(chunks, self.cache.block_size, self.scratch)
        return self._forward(static, bucket, n)

    def run_decode(self, token_ids: list[int], positions: np.ndarray, table_offsets: np.ndarray,
                   table_ids: np.ndarray) -> torch.Tensor:
        """`run` for a decode-only engine step straight from the scheduler's arrays (no per-row Python):
        token_ids [S] (each sequence's token at `positions`), positions [S], the block tables as CSR
        (table_offsets [S+1] into table_ids) -> logits [S, V]."""
        n = len(token_ids)
        bucket = self.bucket(n)
        if bucket is None:
            raise InvalidInputError(f"PagedDecodeGraphs.run_decode: {n} sequences do not fit the buckets")
        static = self._static.get(bucket) or self._make_static(bucket)
        static.load_arrays(token_ids, positions, table_offsets, table_ids, self.cache.block_size, self.scratch)
        return self._forward(static, bucket, n)

    def _forward(self, static: "_PagedStatic", bucket: int, n: int) -> torch.Tensor:
        if self.mode == "static":
            return self.model.forward_paged(static.batch, self.cache, self.backend, self.vocab_ranges)[:n]
        graph, out = self._graphs.get(bucket) or self._capture(bucket, static)
        graph.replay()
        return out[:n]

    def warmup(self) -> int:
        """Run (and on CUDA capture) every batch bucket once before traffic, each padded row on the
        scratch block only (never handed out), so no request pays a capture. Call it while no engine
        step runs. Returns the number of buckets."""
        from .paged_kv import SequenceChunk

        for bucket in self.buckets:
            self.run([SequenceChunk([0], 0, [self.scratch])] * bucket)
        return len(self.buckets)

    def _make_static(self, bucket: int) -> "_PagedStatic":
        static = _PagedStatic(bucket, self.max_blocks, self.model.device)
        self._static[bucket] = static
        return static

    def _capture(self, bucket: int, static: "_PagedStatic"):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        step = lambda: self.model.forward_paged(static.batch, self.cache, self.backend, self.vocab_ranges)  # noqa: E731
        with self._capture_lock:
            self._graphs[bucket] = capture_graph(step, self.model.device, self._pool)
        return self._graphs[bucket]


class _PagedStatic:
    """The static input buffers of one decode bucket, as a `PagedBatch` whose tensors never move."""

    def __init__(self, bucket: int, max_blocks: int, device: torch.device) -> None:
        from .paged_kv import PagedBatch

        long = dict(dtype=torch.long, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        self.bucket, self.max_blocks = bucket, max_blocks
        self.batch = PagedBatch(
            input_ids=torch.zeros(bucket, **long), positions=torch.zeros(bucket, **long),
            slot_mapping=torch.zeros(bucket, **long), block_tables=torch.zeros(bucket, max_blocks, **i32),
            seq_lens=torch.ones(bucket, **i32), cu_seqlens_q=torch.arange(bucket + 1, **i32),
            logits_indices=torch.arange(bucket, **long))

    def load_arrays(self, token_ids: list[int], positions: np.ndarray, table_offsets: np.ndarray,
                    table_ids: np.ndarray, block_size: int, scratch: int) -> None:
        """`load` from arrays (see `PagedDecodeGraphs.run_decode`): the padded block tables are one
        scatter of the CSR ids, the slots one gather; padding rows touch only the scratch block."""
        b, n = self.bucket, len(token_ids)
        if not 0 < n <= b:
            raise InvalidInputError(f"load_arrays: {n} rows for a bucket of {b}")
        starts = table_offsets[:n].astype(np.int64)
        lengths = table_offsets[1:n + 1] - starts
        if int(lengths.max()) > self.max_blocks:
            raise InvalidInputError(f"sequence needs {int(lengths.max())} blocks, graphs hold {self.max_blocks}")
        tables = np.full((b, self.max_blocks), scratch, np.int32)
        rows = np.repeat(np.arange(n), lengths)  # the row of every table entry; its column = rank within the row
        cols = np.arange(rows.size) - np.repeat(starts - starts[0], lengths)
        tables[rows, cols] = table_ids[starts[0]:starts[0] + rows.size]
        pos = np.zeros(b, np.int64)
        pos[:n] = positions
        ids = np.zeros(b, np.int64)
        ids[:n] = token_ids
        slots = np.full(b, scratch * block_size, np.int64)
        slots[:n] = table_ids[starts + pos[:n] // block_size] * np.int64(block_size) + pos[:n] % block_size
        lens = np.ones(b, np.int32)
        lens[:n] = pos[:n] + 1
        self._copy_in(ids, pos, slots, tables, lens)

    def load(self, chunks, block_size: int, scratch: int) -> None:
        """Copy this step's rows into the buffers; padding rows touch only the scratch block."""
        b = self.bucket
        ids = np.zeros(b, np.int64)
        pos = np.zeros(b, np.int64)
        slots = np.full(b, scratch * block_size, np.int64)
        tables = np.full((b, self.max_blocks), scratch, np.int32)
        lens = np.ones(b, np.int32)
        for i, c in enumerate(chunks):
            p = c.start
            if len(c.block_table) > self.max_blocks:
                raise InvalidInputError(f"sequence needs {len(c.block_table)} blocks, graphs hold {self.max_blocks}")
            ids[i], pos[i], lens[i] = c.token_ids[0], p, p + 1
            slots[i] = c.block_table[p // block_size] * block_size + p % block_size
            tables[i, :len(c.block_table)] = c.block_table
        self._copy_in(ids, pos, slots, tables, lens)

    def _copy_in(self, ids, pos, slots, tables, lens) -> None:
        bt = self.batch
        for dst, src in ((bt.input_ids, ids), (bt.positions, pos), (bt.slot_mapping, slots),
                         (bt.block_tables, tables), (bt.seq_lens, lens)):
            dst.copy_(torch.from_numpy(src))
