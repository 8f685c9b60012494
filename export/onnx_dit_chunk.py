"""ONNX graph of one streaming DiT step (`DiT.forward_chunk`) with its caches as explicit I/O.

Inputs (B = batch, T = chunk mel frames, Tc = cached frames, all dynamic; Tc may be 0):
    x, mu, cond  [B, 80, T]      as the whole-sequence graph (no mask: a chunk attends to
    t            [B]              itself and every cached frame)
    spks         [B, 80]
    cache_k      [depth, B, H, Tc, hd]   keys of earlier frames, newest first (upstream order)
    cache_v      [depth, B, H, Tc, hd]
    cache_conv   [depth, B, 2, C, 2]     last two inputs of each block's two causal convs
                                         (zeros at stream start)
Outputs:
    velocity     [B, 80, T]
    new_k, new_v [depth, B, H, T + Tc, hd]   this chunk's frames prepended to the cache
    new_conv     [depth, B, 2, C, 2]

A stream's first step (no cache) is the same graph with Tc = 0 and a zero conv cache:
attention over an empty cache and causal convs over zero history are exactly what
`forward_chunk(cache=None)` computes. Truncating the cache to prompt + left context is
left to the caller (`EstimatorStreamCache.truncated`), as in the torch path.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.flow import DiT, DiTCache, DiTConfig

INPUTS = ("x", "mu", "t", "spks", "cond", "cache_k", "cache_v", "cache_conv")
OUTPUTS = ("velocity", "new_k", "new_v", "new_conv")
DYNAMIC_AXES = {
    "x": {0: "batch", 2: "frames"},
    "mu": {0: "batch", 2: "frames"},
    "t": {0: "batch"},
    "spks": {0: "batch"},
    "cond": {0: "batch", 2: "frames"},
    "cache_k": {1: "batch", 3: "cached_frames"},
    "cache_v": {1: "batch", 3: "cached_frames"},
    "cache_conv": {1: "batch"},
    "velocity": {0: "batch", 2: "frames"},
    "new_k": {1: "batch", 3: "total_frames"},
    "new_v": {1: "batch", 3: "total_frames"},
    "new_conv": {1: "batch"},
}


class DiTChunkGraph(nn.Module):
    """`DiT.forward_chunk` with the cache as three tensors (see module doc)."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, x, mu, t, spks, cond, cache_k, cache_v, cache_conv):  # noqa: D102
        velocity, cache = self.dit.forward_chunk(x, mu, t, spks, cond, DiTCache(cache_k, cache_v, cache_conv))
        return velocity, cache.k, cache.v, cache.conv


def empty_cache(c: DiTConfig, batch: int, like: torch.Tensor) -> DiTCache:
    """The cache of a stream's first step (float32 like `like`): zero cached frames, zero conv history."""
    k = like.new_zeros(c.depth, batch, c.num_heads, 0, c.head_dim, dtype=torch.float32)
    conv = like.new_zeros(c.depth, batch, 2, c.hidden_size, 2, dtype=torch.float32)
    return DiTCache(k=k, v=k.clone(), conv=conv)


def example_inputs(dit: DiT, frames: int, cached: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random float32 CPU inputs of the exported signature with `cached` cache frames."""
    g = torch.Generator().manual_seed(seed)
    c = dit.cfg
    mel = c.out_channels
    x, mu, cond = (torch.randn(batch, mel, frames, generator=g) for _ in range(3))
    t = torch.rand(batch, generator=g)
    spks = torch.randn(batch, mel, generator=g)
    k, v = (torch.randn(c.depth, batch, c.num_heads, cached, c.head_dim, generator=g) for _ in range(2))
    conv = torch.randn(c.depth, batch, 2, c.hidden_size, 2, generator=g)
    return x, mu, t, spks, cond, k, v, conv


def output_shapes(dit: DiT, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    depth, batch, heads, cached, hd = inputs["cache_k"]
    frames = inputs["x"][2]
    kv = (depth, batch, heads, cached + frames, hd)
    return {"velocity": tuple(inputs["x"]), "new_k": kv, "new_v": kv, "new_conv": tuple(inputs["cache_conv"])}


def input_shapes(dit: DiT, batch: int, frames: int, cached: int) -> dict[str, tuple[int, ...]]:
    c = dit.cfg
    seq = (batch, c.out_channels, frames)
    kv = (c.depth, batch, c.num_heads, cached, c.head_dim)
    return {"x": seq, "mu": seq, "t": (batch,), "spks": (batch, c.out_channels), "cond": seq,
            "cache_k": kv, "cache_v": kv, "cache_conv": (c.depth, batch, 2, c.hidden_size, 2)}
