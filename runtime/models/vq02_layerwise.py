"""vq02 encoder over a whole utterance, layer by layer instead of call by call.

Upstream drives the 50-layer encoder once per 240 ms piece (`SANMStreamingEncoder.forward_chunk`,
kept as the reference): a 5 s prompt is 21 calls x 50 layers of 9-row matmuls, so every call
re-reads all 50 layers' weights (~630 MB in fp32) and launches ~1,000 small kernels. Nothing in
that loop needs it to run call by call when the whole recording is at hand:

* call c's input block is a window of the embedded frames: the previous call's last
  `overlap_rows` rows (zeros before the first call) then its own T_c frames;
* at every layer, call c attends to [its kv cache ++ its block], and that cache holds rows of
  *earlier calls at the same layer* (each call's first R - kv_drop_rows keys/values, the last
  `kv_cache_frames` of them, the first call's kept untruncated) -- never a later layer's rows.

So layer l of every call can run as one batch once layer l-1 has run for every call: each call is
a batch row, its cache a gather of earlier rows' keys/values, with a mask for the padded and the
not-yet-cached rows. Same math as the loop (same rows, same keys, same zero padding in the FSMN
convolution); only the summation order of the matmuls changes. 50 layer calls instead of 21 x 50.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .vq02_encoder import SANMAttention, SANMEncoderConfig, SANMEncoderLayer, SANMStreamingEncoder, _layer_norm


@dataclass(frozen=True)
class CallLayout:
    """Where upstream's calls sit when all of them run as one batch (n calls, rows padded to R).

    block_rows:  [n, R] index into [overlap zeros ++ embedded frames] of each call's input rows
                 (padding points at row 0, a zero row).
    row_valid:   [n, R] bool, the call's own rows (R_c = overlap_rows + T_c of them).
    cache_index: [n, L] index into the flattened (call, row) keys of the same layer: the rows in
                 call c's kv cache, oldest first (padding points at 0).
    cache_valid: [n, L] bool.
    out_rows:    [N] index into the flattened (call, row) outputs of each frame's output row.
    """

    block_rows: torch.Tensor
    row_valid: torch.Tensor
    cache_index: torch.Tensor
    cache_valid: torch.Tensor
    out_rows: torch.Tensor

    @property
    def calls(self) -> int:
        return self.block_rows.shape[0]

    @property
    def rows(self) -> int:
        return self.block_rows.shape[1]

    @classmethod
    def plan(cls, lengths: Sequence[int], cfg: SANMEncoderConfig, device: torch.device | str) -> "CallLayout":
        """Layout of calls with `lengths` frames each (positive ints) under cfg's streaming parameters."""
        overlap, drop, keep = cfg.overlap_rows, cfg.kv_drop_rows, cfg.kv_cache_frames
        width = overlap + max(lengths)
        blocks, valid, caches, out_rows = [], [], [], []
        cached: list[int] | None = None  # flat (call * width + row) keys in the cache after the last call
        offset = 0
        for call, length in enumerate(lengths):
            own = overlap + length
            blocks.append(list(range(offset, offset + own)) + [0] * (width - own))
            valid.append([True] * own + [False] * (width - own))
            out_rows.extend(call * width + overlap + j for j in range(length))
            caches.append([] if cached is None else cached)
            cached = _next_cache(cached, [call * width + r for r in range(own - drop)], keep)
            offset += length
        depth = max(1, max(len(c) for c in caches))
        cache_index = [c + [0] * (depth - len(c)) for c in caches]
        cache_valid = [[True] * len(c) + [False] * (depth - len(c)) for c in caches]

        def tensor(rows, dtype):
            return torch.tensor(rows, dtype=dtype, device=device)

        return cls(tensor(blocks, torch.long), tensor(valid, torch.bool), tensor(cache_index, torch.long),
                   tensor(cache_valid, torch.bool), tensor(out_rows, torch.long))


def _next_cache(cached: list[int] | None, new: list[int], keep: int | None) -> list[int] | None:
    """The cache after one call, as `SANMAttention._next_kv_cache` builds it (0 = no cache)."""
    if keep == 0:
        return None
    if cached is None:
        return new  # the first call's rows are kept untruncated, as upstream does
    merged = cached + new
    return merged if keep is None else merged[-keep:]


@torch.no_grad()
def encode_layerwise(encoder: SANMStreamingEncoder, feats: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """feats [B, N, input_size] + upstream call lengths (validated, summing to N) -> [B, N, output_size].

    Equals `encoder.encode_chunked(feats, lengths)` up to matmul summation order.
    """
    cfg = encoder.cfg
    b, n, _ = feats.shape
    layout = CallLayout.plan(lengths, cfg, feats.device)
    x = encoder.embed(feats, 0)  # [B, N, in]: PE positions 1..N, as the calls count them
    x = torch.cat([x.new_zeros(b, cfg.overlap_rows, x.shape[-1]), x], dim=1)  # [B, O + N, in]
    h = x[:, layout.block_rows]  # [B, n, R, in]
    h = h.reshape(b * layout.calls, layout.rows, -1)  # [B*n, R, in]
    masks = _Masks.of(layout, b, h.dtype)  # the same for every layer: built once, not 50 times
    for layer in encoder.layers:
        h = _layer_all_calls(layer, h, layout, masks)
    out = h.reshape(b, layout.calls * layout.rows, -1)[:, layout.out_rows]  # [B, N, D]
    return _layer_norm(out, encoder.after_norm)


@dataclass(frozen=True)
class _Masks:
    """value_keep [B*n, R, 1] (1 for a call's own rows, 0 for padding; model dtype) and key_valid
    [B*n, 1, 1, L + R] (bool: cached rows then own rows a call attends to)."""

    value_keep: torch.Tensor
    key_valid: torch.Tensor

    @classmethod
    def of(cls, layout: CallLayout, b: int, dtype: torch.dtype) -> "_Masks":
        keep = layout.row_valid.repeat(b, 1)[..., None].to(dtype)
        keys = torch.cat([layout.cache_valid, layout.row_valid], dim=1).repeat(b, 1)
        return cls(keep, keys[:, None, None, :])


def _layer_all_calls(layer: SANMEncoderLayer, h: torch.Tensor, layout: CallLayout, masks: _Masks) -> torch.Tensor:
    """`SANMEncoderLayer.forward` for every call at once. h: [B*n, R, in] -> [B*n, R, D]."""
    a = _attention_all_calls(layer.self_attn, _layer_norm(h, layer.norm1), layout, masks)
    h = h + a if layer.has_attention_residual else a
    return h + layer.feed_forward(_layer_norm(h, layer.norm2))


def _attention_all_calls(attn: SANMAttention, x: torch.Tensor, layout: CallLayout, masks: _Masks) -> torch.Tensor:
    """`SANMAttention.forward` of every call with its cache gathered from earlier calls' rows.

    x: [B*n, R, in] -> [B*n, R, D].
    """
    rows, n = layout.rows, layout.calls
    b = x.shape[0] // n
    q, k, v = attn.linear_q_k_v(x).split(attn.heads * attn.d_k, dim=-1)  # each [B*n, R, D]
    # Padded rows stay out of the FSMN convolution: upstream pads each block with zeros.
    v = v * masks.value_keep
    q_h, k_h, v_h = (t.reshape(b * n, rows, attn.heads, attn.d_k) for t in (q, k, v))  # [B*n, R, H, d_k]
    k_all = torch.cat([_gather_cache(k_h, layout, b), k_h], dim=1)  # [B*n, L + R, H, d_k]
    v_all = torch.cat([_gather_cache(v_h, layout, b), v_h], dim=1)
    q_h = q_h.transpose(1, 2) * (attn.d_k ** -0.5)  # [B*n, H, R, d_k]; upstream scales q first
    out = F.scaled_dot_product_attention(q_h, k_all.transpose(1, 2), v_all.transpose(1, 2),
                                         attn_mask=masks.key_valid, scale=1.0)  # [B*n, H, R, d_k]
    out = out.transpose(1, 2).reshape(b * n, rows, attn.heads * attn.d_k)  # [B*n, R, D]
    return attn.linear_out(out) + attn.fsmn_memory(v)


def _gather_cache(t: torch.Tensor, layout: CallLayout, b: int) -> torch.Tensor:
    """t: [B*n, R, H, d_k] this layer's rows -> [B*n, L, H, d_k] each call's cached rows."""
    n = layout.calls
    flat = t.reshape(b, n * layout.rows, *t.shape[2:])  # [B, n*R, H, d_k]
    return flat[:, layout.cache_index].reshape(b * n, layout.cache_index.shape[1], *t.shape[2:])
