"""Token embedding and the encoder's input embedding with ESPnet relative positions."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...layers.embedding import dual_codebook_embedding


class DualCodebookEmbedding(nn.Module):
    """One shared table for both codebooks; a frame's vector is [E[vq02] | E[vq06]].

    Parameter: `embedding.weight` [vocab, dim/2] (flow.pt `input_embedding.embedding.weight`).
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim // 2)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """pairs `[B, T, 2]` int → `[B, T, dim]` (both gathers + concat in one Triton kernel on CUDA)."""
        return dual_codebook_embedding(pairs, self.embedding.weight)


def rel_position_table(size: int, d_model: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """ESPnet relative positional encodings for relative positions size-1 … -(size-1): `[1, 2·size-1, d]`.

    Row k encodes relative position (size-1-k). Values are computed in float32 exactly as
    upstream's `EspnetRelPositionalEncoding.extend_pe` does (product in fp32, then sin/cos),
    which depends only on the position, so a table of any length has identical rows.
    """
    position = torch.arange(0, size, dtype=torch.float32, device=device).unsqueeze(1)  # [size, 1]
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
                         * -(math.log(10000.0) / d_model))  # [d/2]
    positive = torch.zeros(size, d_model, dtype=torch.float32, device=device)
    negative = torch.zeros(size, d_model, dtype=torch.float32, device=device)
    positive[:, 0::2] = torch.sin(position * div_term)
    positive[:, 1::2] = torch.cos(position * div_term)
    negative[:, 0::2] = torch.sin(-1 * position * div_term)
    negative[:, 1::2] = torch.cos(-1 * position * div_term)
    table = torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0)  # [2*size-1, d]
    return table.unsqueeze(0).to(dtype)


class LinearInputEmbed(nn.Module):
    """Linear → LayerNorm(1e-5) → ×√d (upstream `LinearNoSubsampling` + ESPnet rel-PE scaling).

    Parameters `out.0` (Linear) and `out.1` (LayerNorm), as in flow.pt `encoder.embed.out.*`.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim, eps=1e-5))
        self.out_dim = out_dim
        self.xscale = math.sqrt(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[B, T, in]` → `[B, T, out]` (positions are added inside attention, not here)."""
        return self.out(x) * self.xscale
