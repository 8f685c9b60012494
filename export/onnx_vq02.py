"""ONNX graph of one vq02 Paraformer encoder call (`SANMStreamingEncoder.forward_chunk`).

Inputs (B = batch, T = new frames, C = cached frames, all dynamic; C may be 0):
    feats      [B, T, 560]              new LFR+CMVN frames
    overlap    [B, R, 560]              overlap rows of the previous call (zeros at the start;
                                        R = chunk_size[0] + chunk_size[2], 5 upstream)
    position   [1] int64                frames encoded before this call (the PE starts at position+1)
    cache_k    [L, B, H, C, d_k]        every layer's key cache (L = num_blocks)
    cache_v    [L, B, H, C, d_k]
Outputs:
    out        [B, T, D]                encoder output for the new frames
    next_overlap [B, R, 560]
    new_k, new_v [L, B, H, C + R − drop, d_k]   cache ++ this block minus its last
                                        `chunk_size[2]` rows, NOT yet cut to the look-back
                                        window: the caller applies upstream's rule (keep the
                                        first block whole, later the last 16 frames), which
                                        depends on whether a layer had a cache at all.

The sinusoidal PE is computed inside the graph from `position` with the same float32
ops as `sinusoid_position_encoding`, so positions stay exact.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ..models.vq02_encoder import SANMStreamingEncoder, _layer_norm

INPUTS = ("feats", "overlap", "position", "cache_k", "cache_v")
OUTPUTS = ("out", "next_overlap", "new_k", "new_v")
DYNAMIC_AXES = {
    "feats": {0: "batch", 1: "frames"},
    "overlap": {0: "batch"},
    "cache_k": {1: "batch", 3: "cached_frames"},
    "cache_v": {1: "batch", 3: "cached_frames"},
    "out": {0: "batch", 1: "frames"},
    "next_overlap": {0: "batch"},
    "new_k": {1: "batch", 3: "new_cached_frames"},
    "new_v": {1: "batch", 3: "new_cached_frames"},
}


class VQ02ChunkGraph(nn.Module):
    """One `forward_chunk` with the state as tensors; caches come out untruncated (see module doc)."""

    def __init__(self, encoder: SANMStreamingEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        # An unbounded look-back makes each layer return cache ++ block[:-drop] whole.
        self.graph_cfg = replace(encoder.cfg, encoder_chunk_look_back=-1)
        half = encoder.cfg.input_size // 2
        increment = torch.log(torch.tensor(10000.0, dtype=torch.float32)) / (half - 1)
        self.register_buffer("inv_freq", torch.exp(torch.arange(half, dtype=torch.float32) * -increment),
                             persistent=False)  # [half], bit-identical to sinusoid_position_encoding's
        self.scale = math.sqrt(encoder.cfg.output_size)

    def forward(self, feats, overlap, position, cache_k, cache_v):  # noqa: D102 - shapes in the module doc
        steps = torch.arange(1, feats.shape[1] + 1, device=feats.device, dtype=torch.int64)
        pos = (position + steps).to(torch.float32)  # [T]
        angle = pos[:, None] * self.inv_freq[None, :]  # [T, half]
        pe = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)  # [T, input]
        # As `SANMStreamingEncoder.embed`: scale + PE in float32, then the model dtype.
        x = (feats.float() * self.scale + pe).to(self.encoder._param_dtype())
        block = torch.cat([overlap.to(x.dtype), x], dim=1)  # [B, R + T, input]
        h = block
        keys, values = [], []
        for i, layer in enumerate(self.encoder.layers):
            h, (k, v) = layer(h, (cache_k[i], cache_v[i]), self.graph_cfg)
            keys.append(k)
            values.append(v)
        out = _layer_norm(h[:, h.shape[1] - feats.shape[1]:], self.encoder.after_norm)
        return out, block[:, block.shape[1] - overlap.shape[1]:], torch.stack(keys), torch.stack(values)


def example_inputs(encoder: SANMStreamingEncoder, frames: int, cached: int, batch: int = 1, position: int = 7,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c = encoder.cfg
    feats = torch.randn(batch, frames, c.input_size, generator=g)
    overlap = torch.randn(batch, c.overlap_rows, c.input_size, generator=g)
    pos = torch.tensor([position], dtype=torch.int64)
    layers = len(encoder.layers)
    k, v = (torch.randn(layers, batch, c.attention_heads, cached, c.d_k, generator=g) for _ in range(2))
    return feats, overlap, pos, k, v


def output_shapes(encoder: SANMStreamingEncoder, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    b, t, _ = inputs["feats"]
    layers, _, heads, cached, d_k = inputs["cache_k"]
    rows = inputs["overlap"][1] + t
    kv = (layers, b, heads, cached + rows - encoder.cfg.kv_drop_rows, d_k)
    return {"out": (b, t, encoder.cfg.output_size), "next_overlap": tuple(inputs["overlap"]), "new_k": kv, "new_v": kv}


def input_shapes(encoder: SANMStreamingEncoder, batch: int, frames: int, cached: int) -> dict[str, tuple[int, ...]]:
    c = encoder.cfg
    kv = (len(encoder.layers), batch, c.attention_heads, cached, c.d_k)
    return {"feats": (batch, frames, c.input_size), "overlap": (batch, c.overlap_rows, c.input_size),
            "position": (1,), "cache_k": kv, "cache_v": kv}
