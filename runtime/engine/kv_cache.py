"""Preallocated (static) KV cache for the Step1 LLM.

One request batch owns one `KVCache`: K and V tensors [layers, B, kv_heads, S, head_dim]
allocated once at the capacity S the generation needs, plus per-row token counts. The
model writes into it in place (`Step1Model.forward`); nothing is ever reallocated or
concatenated, so the decode step keeps fixed shapes and addresses (CUDA-graph friendly).
The cache stores the pre-repeat (grouped) K/V, as upstream's cache does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidInputError


@dataclass
class KVCache:
    """Static KV cache of one batch of rows.

    k, v: [L, B, G, S, D] in the model dtype; lengths: [B] int64 on the same device, the
    number of valid (already attended) positions per row. Slots at or beyond a row's
    length may hold stale values: the model masks every slot after a query's position.
    """

    k: torch.Tensor
    v: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def allocate(
        cls,
        *,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        capacity: int,
        head_dim: int,
        device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """Zero-filled cache for `batch` rows of up to `capacity` positions each."""
        for name, value in (("num_layers", num_layers), ("batch", batch), ("num_kv_heads", num_kv_heads),
                            ("capacity", capacity), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"{name}: expected a positive int, got {value!r}")
        shape = (num_layers, batch, num_kv_heads, capacity, head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            lengths=torch.zeros(batch, device=device, dtype=torch.long),
        )

    @classmethod
    def for_model(cls, model: Any, batch: int, capacity: int) -> KVCache:
        """Cache matching a Step1Model's config, device and dtype."""
        cfg = model.config
        return cls.allocate(
            num_layers=cfg.num_hidden_layers, batch=batch, num_kv_heads=cfg.num_attention_groups,
            capacity=capacity, head_dim=cfg.head_dim, device=model.device, dtype=model.dtype,
        )

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def reset(self) -> None:
        """Forget every row (the tensors are reused as they are)."""
        self.lengths.zero_()
