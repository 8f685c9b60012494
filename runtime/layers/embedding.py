"""Flow dual-codebook embedding ops that dispatch between Triton kernels and their PyTorch references.

* `dual_codebook_embedding(pairs, table)`: (vq02, vq06) pairs [..., 2] → [..., 2·half] (the
  flow's `input_embedding`, what `FlowModel.embed_tokens` runs).
* `embed_mixed(...)`: the fused form straight from the LLM's mixed ids (reshape to pairs with
  upstream's PAD rule, gather, concat) for a packed ragged batch, writing into a caller's
  buffer; with `first_ids` it is the streaming form (append a chunk to a session's buffer).
* `embed_mixed_sequences(seqs, table)`: convenience wrapper: a list of 1-D id tensors →
  [S, T_max, 2·half] (zeros after each sequence's frames).

Backends: see `editx.layers.backend` ("auto" = Triton on CUDA tensors, the reference otherwise).
"""
from __future__ import annotations

from typing import Sequence

import torch

from editx.kernels import dual_codebook_embedding as emb_kernels

from ..errors import InvalidInputError
from .backend import use_triton


def dual_codebook_embedding(pairs: torch.Tensor, table: torch.Tensor, clamp: bool = False,
                            backend: str = "auto") -> torch.Tensor:
    """pairs [..., 2] int (on table's device) → concat(E[pairs[..., 0]], E[pairs[..., 1]]) [..., 2·half].

    `clamp` maps negative ids to 0 first (upstream's non-streaming path). Ids must be < V
    (callers validate them; see `editx.models.flow.tokens.check_pair_ids`).
    """
    if use_triton("embedding", table.device, backend, None, emb_kernels._pair_embedding_kernel):
        return emb_kernels.pair_embedding(pairs, table, clamp)
    return emb_kernels.pair_embedding_ref(pairs, table, clamp)


def embed_mixed(ids: torch.Tensor, cu_seqlens: torch.Tensor, table: torch.Tensor, out: torch.Tensor,
                out_offsets: torch.Tensor, max_groups: int, first_ids: torch.Tensor | None = None,
                id_offset: int = 0, clamp: bool = False, backend: str = "auto") -> torch.Tensor:
    """Mixed ids of a packed ragged batch → embedded token frames written into `out` (see
    `editx.kernels.dual_codebook_embedding.mixed_embedding` for every argument). Returns out."""
    if use_triton("embedding", table.device, backend, None, emb_kernels._mixed_embedding_kernel):
        return emb_kernels.mixed_embedding(ids, cu_seqlens, table, out, out_offsets, max_groups, first_ids,
                                           id_offset, clamp)
    return emb_kernels.mixed_embedding_ref(ids, cu_seqlens, table, out, out_offsets, first_ids, id_offset, clamp)


def embed_mixed_sequences(sequences: Sequence[torch.Tensor], table: torch.Tensor, id_offset: int = 0,
                          clamp: bool = False, backend: str = "auto") -> torch.Tensor:
    """Each 1-D tensor of mixed ids (non-empty) → [S, T_max, 2·half], T = 3·ceil(n/5) frames per sequence."""
    if not sequences:
        raise InvalidInputError("sequences: expected at least one sequence of mixed ids")
    lengths = []
    for i, seq in enumerate(sequences):
        if not isinstance(seq, torch.Tensor) or seq.dim() != 1 or seq.numel() == 0 or seq.is_floating_point():
            raise InvalidInputError(f"sequences[{i}]: expected a non-empty 1-D integer tensor")
        lengths.append(seq.numel())
    device = table.device
    groups = [-(-n // emb_kernels.GROUP) for n in lengths]
    frames = emb_kernels.FRAMES_PER_GROUP * max(groups)
    out = torch.zeros(len(sequences), frames, 2 * table.shape[1], dtype=table.dtype, device=device)
    ids = torch.cat([s.to(device) for s in sequences])
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    offsets = torch.arange(len(sequences), device=device, dtype=torch.int64) * out.stride(0)
    return embed_mixed(ids, cu, table, out, offsets, max(groups), None, id_offset, clamp, backend)
