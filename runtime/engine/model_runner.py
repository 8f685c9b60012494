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

import torch

from ..errors import InvalidInputError
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
        model = self.model
        side = torch.cuda.Stream(device=model.device)
        side.wait_stream(torch.cuda.current_stream(model.device))
        with torch.cuda.stream(side):  # warm-up: lazy inits and allocator state outside the graph
            for _ in range(2):
                model(self._ids, self.cache, self._pos, attend_len=key_len)
        torch.cuda.current_stream(model.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = model(self._ids, self.cache, self._pos, attend_len=key_len)[:, -1].float()
        self._graphs[key_len] = (graph, out)
        return graph, out
