"""DiT velocity estimator of the flow-matching decoder (upstream `decoder_dit.DiT`).

Input = channel concat [x, mu, speaker (broadcast over time), cond] → in_proj → blocks
of (adaLN-modulated) attention → causal conv block → MLP → final adaLN layer → 80 ch.
There is no positional encoding: order only enters through the causal convolutions,
so attention over cached frames does not care where the cache keeps them.

`forward` runs a whole sequence (padding mask only: full bidirectional attention).
`forward_chunk` runs one streaming chunk: attention sees the chunk plus cached
keys/values (new keys are *prepended*, as upstream, which matters for cache
truncation) and each causal conv continues from its cached last input frames.

The q/k-LayerNorm attention and the adaLN LayerNorm + modulate (+ gated residual) dispatch
through `editx.layers`: fused Triton kernels on CUDA, the PyTorch references elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.attention import dit_attention
from ...layers.norms import adaln_modulate
from .config import DiTConfig
from .encoder import to_device_async, valid_tail

_CONV_KERNEL = 3


class TimestepEmbedder(nn.Module):
    """t ∈ [0, 1] → sinusoid of t·1000 ([cos | sin], 256 dims) → MLP → `[B, hidden]`."""

    def __init__(self, hidden: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t `[B]` → `[B, hidden]`. The sinusoid is computed in fp32 (t stays exact in low precision runs)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t.float() * 1000)[:, None] * freqs[None]  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class DiTAttention(nn.Module):
    """Multi-head attention with per-head LayerNorm on q and k; optional key/value cache."""

    def __init__(self, dim: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        inner = n_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(inner, dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x `[B, T, D]`; mask `[B, 1|T, T+Tc]` bool (True = attend) over keys [this call's frames |
        cached frames], or None; cache (k, v) `[B, H, Tc, hd]`.

        Returns (out `[B, T, D]`, keys, values `[B, H, T+Tc, hd]` with this call's frames first).
        q/k LayerNorm + attention run fused in one Triton kernel on CUDA (editx.layers.attention),
        key-padding masks included: offline ragged batches and ragged streaming chunk batches
        (`ragged_chunk_mask`: padded chunk frames and padded cached frames hidden per row).
        """
        b, t, _ = x.shape
        heads = (b, t, self.n_heads, self.head_dim)  # [B, T, H, hd] views of the projections
        out, k, v = dit_attention(
            self.to_q(x).view(heads), self.to_k(x).view(heads), self.to_v(x).view(heads),
            (self.q_norm.weight, self.q_norm.bias, self.q_norm.eps),
            (self.k_norm.weight, self.k_norm.bias, self.k_norm.eps), mask, cache)
        return self.proj(out), k, v


class CausalConvBlock(nn.Module):
    """causal conv (k3) → LayerNorm → Mish → causal conv (k3), over time.

    Modules sit at the indices of upstream's Sequential (1: conv, 3: LayerNorm, 6: conv;
    the others were transposes/activations) so the keys read `conv.block.{1,3,6}.*`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Identity(), nn.Conv1d(channels, channels, _CONV_KERNEL), nn.Identity(),
            nn.LayerNorm(channels), nn.Mish(), nn.Identity(), nn.Conv1d(channels, channels, _CONV_KERNEL),
            nn.Identity(),
        )

    @staticmethod
    def _causal(conv: nn.Conv1d, x: torch.Tensor, cache: torch.Tensor | None,
                n_valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, C, T]`, cache `[B, C, k−1]` (earlier input frames; zeros at the start); n_valid `[B]`
        valid frames per row of a right-padded batch (None: all T), whose last ones become the cache."""
        if cache is None:
            cache = x.new_zeros(x.shape[0], x.shape[1], _CONV_KERNEL - 1)
        x = torch.cat([cache, x], dim=2)
        tail = x[..., -(_CONV_KERNEL - 1):] if n_valid is None else valid_tail(x, n_valid, _CONV_KERNEL - 1)
        return conv(x), tail

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None,
                n_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, T, C]`; cache `[B, 2, C, k−1]` (conv1, conv2 inputs) → (`[B, T, C]`, new cache).
        n_valid `[B]`: valid frames per row of a right-padded (ragged) batch, None if all are."""
        h, cache1 = self._causal(self.block[1], x.transpose(1, 2), None if cache is None else cache[:, 0], n_valid)
        h = self.block[4](self.block[3](h.transpose(1, 2)))
        h, cache2 = self._causal(self.block[6], h.transpose(1, 2), None if cache is None else cache[:, 1], n_valid)
        return h.transpose(1, 2), torch.stack([cache1, cache2], dim=1)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass(frozen=True)
class DiTCache:
    """Per-ODE-step streaming cache of all blocks (never modified in place).

    k, v `[depth, B, H, T, hd]` (newest frames first); conv `[depth, B, 2, C, 2]`.
    """

    k: torch.Tensor
    v: torch.Tensor
    conv: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.k.shape[3])


class DiTBlock(nn.Module):
    """x += g·Attn(mod(LN1 x)); x += g·Conv(mod(LN3 x)); x += g·MLP(mod(LN2 x)) (adaLN-Zero style)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = DiTAttention(h, cfg.num_heads, cfg.head_dim)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(h, cfg.mlp_hidden)
        self.norm3 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.conv = CausalConvBlock(h)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 9 * h))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        mask: torch.Tensor | None,
        att_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        conv_cache: torch.Tensor | None = None,
        n_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x `[B, T, D]`, c `[B, 1, D]` → (x, keys, values, conv cache); n_valid `[B]` (ragged
        batches) = valid frames per row, for the conv cache.

        Each `adaln_modulate` is modulate(norm(x)) after the previous branch's gated residual
        (one fused kernel on CUDA): x += g·branch; y = LN(x)·(1 + scale) + shift.
        """
        kv = []

        def attend(y: torch.Tensor) -> torch.Tensor:
            att, k, v = self.attn(y, mask, att_cache)
            kv.extend((k, v))
            return att

        x, conv_cache = self.forward_with(x, c, attend, conv_cache, n_valid)
        return x, kv[0], kv[1], conv_cache

    def forward_with(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        attend: Callable[[torch.Tensor], torch.Tensor],
        conv_cache: torch.Tensor | None,
        n_valid: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block with its attention given as `attend(y [B, T, D]) -> [B, T, D]` (the cached
        attention of `forward`, or the slot-pool attention of `dit_slots`) → (x, conv cache)."""
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_conv, scale_conv, gate_conv) = self.adaLN_modulation(c).chunk(9, dim=-1)
        y, _ = adaln_modulate(x, shift_msa, scale_msa, self.norm1.eps)
        att = attend(y)
        y, x = adaln_modulate(x, shift_conv, scale_conv, self.norm3.eps, residual=att, gate=gate_msa)
        conv, conv_cache = self.conv(y, conv_cache, n_valid)
        y, x = adaln_modulate(x, shift_mlp, scale_mlp, self.norm2.eps, residual=conv, gate=gate_conv)
        return x + gate_mlp * self.mlp(y), conv_cache


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(adaln_modulate(x, shift, scale, self.norm_final.eps)[0])


class DiT(nn.Module):
    """Parameter names follow flow.pt's `decoder.estimator.*` keys."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_channels = cfg.out_channels
        self.t_embedder = TimestepEmbedder(cfg.hidden_size, cfg.time_embed_dim)
        self.in_proj = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.out_channels)

    def _inputs(
        self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concat the conditioning on channels and embed t → (h `[B, T, D]`, c `[B, 1, D]`)."""
        dtype = self.in_proj.weight.dtype
        spk = spks.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # [B, 80, T]
        h = torch.cat([x.to(dtype), mu.to(dtype), spk.to(dtype), cond.to(dtype)], dim=1)  # [B, 320, T]
        return self.in_proj(h.transpose(1, 2)), self.t_embedder(t).unsqueeze(1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity for a whole sequence.

        x, mu, cond `[B, 80, T]`; mask `[B, 1, T]` (1 = valid frame) or `[B, T, T]`
        (query × key, e.g. a block-causal mask) or None (all valid); t `[B]`; spks `[B, 80]`
        → `[B, 80, T]` in the module dtype.
        """
        h, c = self._inputs(x, mu, t, spks, cond)
        attn_mask = None if mask is None else mask.bool()
        for block in self.blocks:
            h, _, _, _ = block(h, c, attn_mask)
        return self.final_layer(h, c).transpose(1, 2)

    def forward_chunk(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        cache: DiTCache | None,
        mask: torch.Tensor | None = None,
        n_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DiTCache]:
        """Velocity for one streaming chunk (shapes as `forward`; the chunk attends to itself and
        every cached frame) → (`[B, 80, T]`, new cache with this chunk prepended).

        Ragged batches (several streams, right-padded chunks and caches): mask `[B, 1, T+Tc]`
        from `ragged_chunk_mask` hides padded keys, n_valid `[B]` = valid chunk frames per row
        (their last ones feed the conv caches). Padded query rows compute garbage, never read.
        """
        h, c = self._inputs(x, mu, t, spks, cond)
        keys, values, convs = [], [], []
        for i, block in enumerate(self.blocks):
            att_cache = None if cache is None else (cache.k[i], cache.v[i])
            h, k, v, conv = block(h, c, mask, att_cache, None if cache is None else cache.conv[i], n_valid)
            keys.append(k)
            values.append(v)
            convs.append(conv)
        new_cache = DiTCache(k=torch.stack(keys), v=torch.stack(values), conv=torch.stack(convs))
        return self.final_layer(h, c).transpose(1, 2), new_cache


def ragged_chunk_mask(n_new: Sequence[int], n_cached: Sequence[int], width: int, cache_width: int,
                      device: torch.device | str) -> torch.Tensor | None:
    """Key mask `[B, 1, width + cache_width]` (True = attend) of a ragged streaming batch whose keys
    are [chunk frames, right-padded to `width` | cached frames, right-padded to `cache_width`]:
    row b sees its first n_new[b] chunk keys and its first n_cached[b] cached keys.
    None when no row is padded (lengths are host ints: no device sync)."""
    if min(n_new) == width and min(n_cached, default=0) == cache_width:
        return None
    pos = torch.arange(width + cache_width)  # built on the host, copied once
    new = pos < torch.tensor(list(n_new))[:, None]
    old = (pos >= width) & (pos < width + torch.tensor(list(n_cached))[:, None])
    return to_device_async((new | old).unsqueeze(1), device)
