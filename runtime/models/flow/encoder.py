"""`UpsampleConformerEncoderV2`: token frames (25 Hz) → encoder states at mel rate (50 Hz).

embed (Linear+LN, ×√d) → pre-lookahead conv (sees 3 future frames) → conformer blocks
(rel-pos self-attention + SiLU FFN, pre-norm) → nearest ×2 upsample + causal conv →
up_embed → more conformer blocks → after_norm.

Two entry points:
* `forward`: the whole sequence at once, bidirectional attention (non-streaming path).
* `forward_chunk`: one streaming chunk with explicit caches, exactly as upstream's
  streaming path computes it: the pre-lookahead conv consumes the chunk's 3 extra
  frames (or 3 zero frames on the last chunk), both convs carry their left context
  in `EncoderChunkCache`, and attention sees cached keys/values of all earlier frames
  plus the chunk (no mask, no cache truncation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidInputError
from .config import FlowEncoderConfig
from .embedding import LinearInputEmbed, rel_position_table

_PRE_CONV2_CONTEXT = 2  # left context of the pre-lookahead layer's second conv (kernel 3)


# -- attention ------------------------------------------------------------------------
def rel_shift(matrix_bd: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Select, for query i and key j, the score against relative position (q_pos(i) − j).

    matrix_bd `[B, H, Tq, 2·Tk−1]` holds scores against table rows k ↔ relative position Tk−1−k.
    Queries are the last Tq of the Tk key positions (q_pos(i) = Tk − Tq + i), so the row
    needed is Tq − 1 − i + j. This equals upstream's pad-and-reshape `rel_shift` for Tq ≤ Tk.
    """
    n_queries = matrix_bd.shape[-2]
    q = torch.arange(n_queries, device=matrix_bd.device).unsqueeze(1)  # [Tq, 1]
    k = torch.arange(n_keys, device=matrix_bd.device).unsqueeze(0)  # [1, Tk]
    index = (n_queries - 1 - q + k).expand(*matrix_bd.shape[:2], n_queries, n_keys)
    return torch.gather(matrix_bd, -1, index)  # [B, H, Tq, Tk]


class RelPositionAttention(nn.Module):
    """Transformer-XL style self-attention with ESPnet relative positions.

    Upstream `RelPositionMultiHeadedAttention`: scores = ((q+u)·kᵀ + shift((q+v)·pᵀ)) / √d_k.
    """

    def __init__(self, n_heads: int, dim: int, key_bias: bool = True) -> None:
        super().__init__()
        self.h = n_heads
        self.d_k = dim // n_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim, bias=key_bias)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.h, self.d_k)  # [B, T, H, d_k]

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        mask: torch.Tensor | None,
        k_cache: torch.Tensor | None = None,
        v_cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x `[B, Tq, D]`; pos_emb `[1, 2·Tk−1, D]`; mask `[B, 1|Tq, Tk]` bool (True = attend) or None;
        caches `[B, H, Tc, d_k]` hold earlier frames (Tk = Tc + Tq).

        Returns (out `[B, Tq, D]`, keys `[B, H, Tk, d_k]`, values `[B, H, Tk, d_k]`).
        """
        q = self._heads(self.linear_q(x))  # [B, Tq, H, d_k]
        k = self._heads(self.linear_k(x)).transpose(1, 2)  # [B, H, Tq, d_k]
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        if k_cache is not None:
            k = torch.cat([k_cache, k], dim=2)  # cache first: it holds the earlier frames
            v = torch.cat([v_cache, v], dim=2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # [1, H, 2Tk-1, d_k]
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # [B, H, Tq, d_k]
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))  # [B, H, Tq, Tk]
        matrix_bd = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)), k.shape[2])
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        if mask is not None:
            blocked = ~mask.unsqueeze(1)  # [B, 1, 1|Tq, Tk]
            scores = scores.masked_fill(blocked, float("-inf"))
            attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape[0], -1, self.h * self.d_k)
        return self.linear_out(out), k, v


class PositionwiseFeedForward(nn.Module):
    """w_2(SiLU(w_1(x)))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm block without macaron FFN or conv module (upstream `ConformerEncoderLayer` as configured)."""

    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, key_bias: bool) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(n_heads, dim, key_bias)
        self.feed_forward = PositionwiseFeedForward(dim, ffn_hidden)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-12)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-12)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        mask: torch.Tensor | None,
        k_cache: torch.Tensor | None = None,
        v_cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x `[B, T, D]` → (x `[B, T, D]`, keys, values) (see `RelPositionAttention`)."""
        att, k, v = self.self_attn(self.norm_mha(x), pos_emb, mask, k_cache, v_cache)
        x = x + att
        x = x + self.feed_forward(self.norm_ff(x))
        return x, k, v


# -- convolutions ---------------------------------------------------------------------
class PreLookaheadLayer(nn.Module):
    """conv1 (kernel L+1) over [frame … frame+L] → LeakyReLU(0.01) → causal conv2 (kernel 3) → + input."""

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.pre_lookahead_len = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=_PRE_CONV2_CONTEXT + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole sequence: x `[B, T, C]` → `[B, T, C]` (zeros stand in for frames past the end)."""
        h = F.pad(x.transpose(1, 2), (0, self.pre_lookahead_len))  # [B, C, T+L]
        h = F.leaky_relu(self.conv1(h))  # [B, C, T]
        h = self.conv2(F.pad(h, (_PRE_CONV2_CONTEXT, 0)))
        return h.transpose(1, 2) + x

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor | None, lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, T, C]` whose last L frames are lookahead; cache `[B, C, 2]` (conv1 outputs of the
        previous frames, zeros at stream start) → (`[B, T−L, C]`, new cache `[B, C, 2]`).

        lengths `[B]` (ragged batches): valid output frames per row (the rest is right padding);
        the new cache then holds each row's last valid conv1 outputs."""
        h = F.leaky_relu(self.conv1(x.transpose(1, 2)))  # [B, C, T-L]
        if cache is None:
            cache = h.new_zeros(h.shape[0], h.shape[1], _PRE_CONV2_CONTEXT)
        h = torch.cat([cache, h], dim=2)
        new_cache = h[..., -_PRE_CONV2_CONTEXT:] if lengths is None else valid_tail(h, lengths, _PRE_CONV2_CONTEXT)
        out = self.conv2(h).transpose(1, 2)
        return out + x[:, : out.shape[1]], new_cache


class Upsample1D(nn.Module):
    """Nearest ×stride upsample, then a causal conv of kernel 2·stride+1."""

    def __init__(self, channels: int, stride: int, scale_factor: float) -> None:
        super().__init__()
        self.stride = stride
        self.scale_factor = float(scale_factor)
        self.conv = nn.Conv1d(channels, channels, kernel_size=stride * 2 + 1)

    @property
    def context(self) -> int:
        return self.stride * 2

    def forward(
        self, x: torch.Tensor, cache: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, C, T]`, cache `[B, C, 2·stride]` of earlier upsampled frames (zeros at the start)
        → (`[B, C, stride·T]`, new cache). lengths `[B]` (ragged batches): valid input frames per
        row; the new cache then holds each row's last valid upsampled frames."""
        up = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")
        if cache is None:
            cache = up.new_zeros(up.shape[0], up.shape[1], self.context)
        up = torch.cat([cache, up], dim=2)
        tail = up[..., -self.context:] if lengths is None else valid_tail(up, lengths * self.stride, self.context)
        return self.conv(up), tail


# -- streaming cache ------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderChunkCache:
    """Everything `forward_chunk` carries between chunks (never modified in place).

    lookahead_conv `[B, C, 2]`, up_conv `[B, C, 2·stride]`; keys/values of every earlier
    frame per layer: k, v `[num_blocks, B, H, T1, d_k]`, up_k, up_v `[num_up_blocks, B, H, stride·T1, d_k]`.
    """

    lookahead_conv: torch.Tensor
    up_conv: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    up_k: torch.Tensor
    up_v: torch.Tensor

    @property
    def frames(self) -> int:
        """Token frames already encoded (T1)."""
        return int(self.k.shape[3])


# -- the encoder ----------------------------------------------------------------------
class UpsampleConformerEncoderV2(nn.Module):
    """Parameter names follow flow.pt's `encoder.*` keys."""

    def __init__(self, cfg: FlowEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.output_size
        self.embed = LinearInputEmbed(cfg.input_size, dim)
        self.pre_lookahead_layer = PreLookaheadLayer(dim, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(
            ConformerLayer(dim, cfg.attention_heads, cfg.linear_units, cfg.key_bias) for _ in range(cfg.num_blocks))
        self.up_layer = Upsample1D(dim, cfg.up_stride, cfg.up_scale_factor)
        self.up_embed = LinearInputEmbed(cfg.input_size, dim)
        self.up_encoders = nn.ModuleList(
            ConformerLayer(dim, cfg.attention_heads, cfg.linear_units, cfg.key_bias) for _ in range(cfg.num_up_blocks))
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)

    def _pos(self, size: int, like: torch.Tensor) -> torch.Tensor:
        return rel_position_table(size, self.cfg.output_size, like.dtype, like.device)

    def forward(
        self,
        xs: torch.Tensor,
        lengths: torch.Tensor | None = None,
        block_sizes: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Whole-sequence encoder: xs `[B, T, D]` embedded token frames → `[B, stride·T, D]`.

        lengths `[B]` masks padded key frames (None = all valid). block_sizes (token frames per
        block, summing to T) restricts attention to the own and earlier blocks: one full pass
        that reproduces `forward_chunk`'s streaming semantics (used as its reference).
        """
        stride = self.up_layer.stride
        mask = _attention_mask(xs, lengths, block_sizes)  # [B, 1|T, T] or None
        h = self.pre_lookahead_layer(self.embed(xs))
        pos = self._pos(h.shape[1], h)
        for layer in self.encoders:
            h, _, _ = layer(h, pos, mask)
        h, _ = self.up_layer(h.transpose(1, 2))
        h = self.up_embed(h.transpose(1, 2))  # [B, stride*T, D]
        up_lengths = None if lengths is None else lengths * stride
        up_blocks = None if block_sizes is None else [b * stride for b in block_sizes]
        mask = _attention_mask(h, up_lengths, up_blocks)
        pos = self._pos(h.shape[1], h)
        for layer in self.up_encoders:
            h, _, _ = layer(h, pos, mask)
        return self.after_norm(h)

    def forward_chunk(
        self,
        xs: torch.Tensor,
        cache: EncoderChunkCache | None,
        last: bool,
    ) -> tuple[torch.Tensor, EncoderChunkCache]:
        """One streaming chunk: xs `[B, T, D]` embedded token frames whose last `pre_lookahead_len`
        frames are lookahead (unless `last`, where zero frames are appended after the embedding).

        Returns (`[B, stride·T', D]`, new cache) with T' = T − lookahead (T if last).
        """
        h = self.embed(xs)
        if last:
            h = F.pad(h, (0, 0, 0, self.pre_lookahead_len))
        h, lookahead_conv = self.pre_lookahead_layer.forward_chunk(h, None if cache is None else cache.lookahead_conv)
        offset = 0 if cache is None else cache.frames
        pos = self._pos(offset + h.shape[1], h)
        h, k, v = _run_layers(self.encoders, h, pos, None if cache is None else (cache.k, cache.v))

        h, up_conv = self.up_layer(h.transpose(1, 2), None if cache is None else cache.up_conv)
        h = self.up_embed(h.transpose(1, 2))
        pos = self._pos(offset * self.up_layer.stride + h.shape[1], h)
        h, up_k, up_v = _run_layers(self.up_encoders, h, pos, None if cache is None else (cache.up_k, cache.up_v))
        new_cache = EncoderChunkCache(lookahead_conv=lookahead_conv, up_conv=up_conv, k=k, v=v, up_k=up_k, up_v=up_v)
        return self.after_norm(h), new_cache

    def forward_chunk_ragged(
        self,
        xs: torch.Tensor,
        lengths: Sequence[int],
        caches: Sequence[EncoderChunkCache | None],
        last: Sequence[bool],
    ) -> tuple[torch.Tensor, list[int], list[EncoderChunkCache]]:
        """`forward_chunk` of several streams in one batch (ragged: each row its own chunk and cache).

        xs `[B, T, D]` embedded token frames, row b valid for its first lengths[b] frames (right
        padding after); caches[b] (None = stream start) and last[b] as `forward_chunk` takes them.
        Row b's result equals `forward_chunk(xs[b:b+1, :lengths[b]], caches[b], last[b])` up to
        floating-point reduction order. Returns (h `[B, stride·T'_max, D]`, right-padded; the
        valid mel-rate frames per row stride·T'_b; the new cache of every row).

        Layout: attention keys are [cache, left-padded to the longest | chunk, right-padded], so
        query and key positions differ by the same amount in every row as they do unbatched (the
        relative-position scores need no per-row shift); padded keys are masked out.
        """
        look, stride = self.pre_lookahead_len, self.up_layer.stride
        batch = xs.shape[0]
        if not (len(lengths) == len(caches) == len(last) == batch):
            raise InvalidInputError(f"lengths/caches/last: expected {batch} entries each (one per row of xs), "
                                    f"got {len(lengths)}/{len(caches)}/{len(last)}")
        n_in = [int(n) + (look if end else 0) for n, end in zip(lengths, last)]  # with the zero lookahead
        n_out = [n - look for n in n_in]
        if min(lengths) < 1 or min(n_out) < 1 or max(lengths) > xs.shape[1]:
            raise InvalidInputError(f"lengths: each row needs 1..{xs.shape[1]} frames and more than the "
                                    f"{look} lookahead frames unless last, got {list(lengths)}")
        width = max(n_in)
        h = self.embed(xs[:, :width])
        h = F.pad(h, (0, 0, 0, width - h.shape[1]))
        # Zero every frame past a row's tokens: the last chunk's zero lookahead (as `forward_chunk` pads).
        padding = torch.arange(width) >= torch.tensor(list(lengths))[:, None]  # [B, width], built on the host
        h = h.masked_fill(to_device_async(padding, h.device)[..., None], 0.0)  # [B, width, D]
        out_len = to_device_async(torch.tensor(n_out), h.device)

        def per_row(name: str) -> list:
            return [None if c is None else getattr(c, name) for c in caches]  # None: a stream's first chunk

        h, lookahead_conv = self.pre_lookahead_layer.forward_chunk(
            h, _stack_rows(per_row("lookahead_conv")), out_len)  # [B, T'max, D]
        h, (k, v) = self._ragged_layers(self.encoders, h, per_row("k"), per_row("v"), n_out)
        h, up_conv = self.up_layer(h.transpose(1, 2), _stack_rows(per_row("up_conv")), out_len)
        h = self.up_embed(h.transpose(1, 2))  # [B, stride*T'max, D]
        n_up = [stride * n for n in n_out]
        h, (up_k, up_v) = self._ragged_layers(self.up_encoders, h, per_row("up_k"), per_row("up_v"), n_up)
        new_caches = [
            EncoderChunkCache(lookahead_conv=lookahead_conv[b:b + 1].clone(), up_conv=up_conv[b:b + 1].clone(),
                              k=k[b], v=v[b], up_k=up_k[b], up_v=up_v[b])
            for b in range(batch)
        ]
        return self.after_norm(h), n_up, new_caches

    def _ragged_layers(
        self,
        layers: nn.ModuleList,
        h: torch.Tensor,
        k_rows: Sequence[torch.Tensor | None],
        v_rows: Sequence[torch.Tensor | None],
        n_new: Sequence[int],
    ) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Cached conformer layers over a ragged batch. h `[B, Tq, D]` (row b: n_new[b] valid frames);
        k_rows[b], v_rows[b] `[n_layers, 1, H, Tc_b, d_k]` or None. Returns h and per-row new (k, v)."""
        cached = [0 if k is None else int(k.shape[3]) for k in k_rows]
        tc, tq = max(cached), h.shape[1]
        packed = None
        if tc > 0:
            like = next(k for k in k_rows if k is not None)
            packed = (_left_padded(k_rows, cached, like), _left_padded(v_rows, cached, like))
        mask = None
        if min(cached) < tc or min(n_new) < tq:
            pos = torch.arange(tc + tq)
            first = torch.tensor([tc - n for n in cached])[:, None]
            end = torch.tensor([tc + n for n in n_new])[:, None]
            mask = to_device_async(((pos >= first) & (pos < end)).unsqueeze(1), h.device)  # [B, 1, Tc+Tq]
        h, k, v = _run_layers(layers, h, self._pos(tc + tq, h), packed, mask)  # k, v: [L, B, H, Tc+Tq, d_k]
        rows = range(h.shape[0])
        keep = [slice(tc - cached[b], tc + n_new[b]) for b in rows]
        return h, ([k[:, b:b + 1, :, keep[b]].clone() for b in rows], [v[:, b:b + 1, :, keep[b]].clone() for b in rows])

    @property
    def pre_lookahead_len(self) -> int:
        return self.cfg.pre_lookahead_len


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host-built tensor (lengths, masks) on `device`. On CUDA it goes through pinned memory
    with a non-blocking copy: a plain copy would wait for all queued GPU work."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def valid_tail(x: torch.Tensor, n_valid: torch.Tensor, width: int) -> torch.Tensor:
    """x `[B, C, width + T]` = [`width` cached frames | T new frames, row b valid for n_valid[b]]
    → `[B, C, width]`: each row's last `width` valid frames (the next chunk's conv context)."""
    index = n_valid.to(x.device).long()[:, None] + torch.arange(width, device=x.device)  # [B, width]
    return torch.gather(x, 2, index[:, None, :].expand(x.shape[0], x.shape[1], width))


def _stack_rows(rows: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Per-stream conv caches `[1, C, K]` (None = stream start: zeros) → `[B, C, K]`; None if all are None."""
    like = next((r for r in rows if r is not None), None)
    if like is None:
        return None
    return torch.cat([torch.zeros_like(like) if r is None else r.to(like) for r in rows], dim=0)


def _left_padded(rows: Sequence[torch.Tensor | None], lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Per-stream caches `[L, 1, H, T_b, d]` (None: T_b = 0) → `[L, B, H, max T_b, d]`, zeros in front."""
    width = max(lengths)
    out = like.new_zeros(like.shape[0], len(rows), like.shape[2], width, like.shape[4])
    for b, (row, n) in enumerate(zip(rows, lengths)):
        if n:
            out[:, b:b + 1, :, width - n:] = row
    return out


def _run_layers(
    layers: nn.ModuleList,
    h: torch.Tensor,
    pos: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor] | None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run cached conformer layers (mask: ragged batches only); return h and the stacked new keys/values."""
    keys, values = [], []
    for i, layer in enumerate(layers):
        k_cache = None if cache is None else cache[0][i]
        v_cache = None if cache is None else cache[1][i]
        h, k, v = layer(h, pos, mask, k_cache, v_cache)
        keys.append(k)
        values.append(v)
    return h, torch.stack(keys), torch.stack(values)


def _attention_mask(
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    block_sizes: Sequence[int] | None,
) -> torch.Tensor | None:
    """Bool mask `[B, 1|T, T]` (True = may attend) from key lengths and/or causal blocks; None if unrestricted."""
    b, t = x.shape[0], x.shape[1]
    mask = None
    if lengths is not None:
        keys = torch.arange(t, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)  # [B, T]
        mask = keys.unsqueeze(1)  # [B, 1, T]
    if block_sizes is not None:
        blocks = block_causal_mask(block_sizes, x.device)
        if blocks.shape[0] != t:
            raise InvalidInputError(f"block_sizes: they sum to {blocks.shape[0]} frames, the sequence has {t}")
        blocks = blocks.unsqueeze(0).expand(b, t, t)
        mask = blocks if mask is None else (mask & blocks)
    return mask


def block_causal_mask(block_sizes: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """`[T, T]` bool: frame i may attend to frame j iff j's block is not after i's block."""
    block_of = torch.repeat_interleave(torch.arange(len(block_sizes), device=device),
                                       torch.as_tensor(list(block_sizes), device=device))
    return block_of.unsqueeze(0) <= block_of.unsqueeze(1)
