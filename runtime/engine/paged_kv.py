"""Paged KV cache for continuous batching (the layout `editx._scheduler`'s block manager hands out).

Pool: k, v [layers, num_blocks, block_size, kv_groups, head_dim]; a request owns a list of
block ids (its block table) and position p lives in block table[p // block_size], row
p % block_size. One engine step runs a packed batch (`PagedBatch`): every scheduled
sequence contributes its new tokens (a prefill chunk or one decode token); their K/V are
written at `slot_mapping` (= block * block_size + row) before attention reads the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InvalidInputError


@dataclass
class PagedKVCache:
    """The shared KV block pool of one engine (per layer: [num_blocks, block_size, G, D])."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int) -> "PagedKVCache":
        cfg = model.config
        if num_blocks < 1 or block_size < 1:
            raise InvalidInputError(f"paged KV: num_blocks {num_blocks} and block_size {block_size} must be >= 1")
        shape = (cfg.num_hidden_layers, num_blocks, block_size, cfg.num_attention_groups, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=model.dtype, device=model.device),
                   torch.zeros(shape, dtype=model.dtype, device=model.device))

    @property
    def num_blocks(self) -> int:
        return self.k.shape[1]

    @property
    def block_size(self) -> int:
        return self.k.shape[2]

    @property
    def bytes_per_block(self) -> int:
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: block dst <- block src in every layer, for each (src, dst)."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], device=self.k.device)
        dst = torch.tensor([p[1] for p in pairs], device=self.k.device)
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]


@dataclass
class SequenceChunk:
    """One scheduled sequence in a step: its new token ids, the position of the first, its block table."""

    token_ids: Sequence[int]
    start: int
    block_table: Sequence[int]


@dataclass
class PagedBatch:
    """Packed inputs of one model step over S sequences and N new tokens (see module doc).

    input_ids [N] int64, positions [N] int64, slot_mapping [N] int64, block_tables [S, MB] int32,
    seq_lens [S] int32 (keys visible to each sequence's last new token), cu_seqlens_q [S+1] int32,
    logits_indices [S] int64 (packed index of each sequence's last new token).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    logits_indices: torch.Tensor

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @classmethod
    def build(cls, chunks: Sequence[SequenceChunk], block_size: int, device: torch.device | str) -> "PagedBatch":
        if not chunks:
            raise InvalidInputError("PagedBatch: no sequences scheduled")
        ids, pos, slots, cu, lens = [], [], [], [0], []
        width = max(len(c.block_table) for c in chunks)
        tables = []
        for c in chunks:
            n = len(c.token_ids)
            end = c.start + n
            if n == 0 or end > len(c.block_table) * block_size:
                raise InvalidInputError(f"PagedBatch: {n} tokens from {c.start} do not fit {len(c.block_table)} blocks")
            ids.extend(int(t) for t in c.token_ids)
            pos.extend(range(c.start, end))
            slots.extend(c.block_table[p // block_size] * block_size + p % block_size for p in range(c.start, end))
            cu.append(cu[-1] + n)
            lens.append(end)
            tables.append(list(c.block_table) + [0] * (width - len(c.block_table)))
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        as_int = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
        return cls(as_long(ids), as_long(pos), as_long(slots), as_int(tables), as_int(lens), as_int(cu),
                   as_long([c - 1 for c in cu[1:]]))
