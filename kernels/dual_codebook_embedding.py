"""Dual-codebook embedding of the flow decoder (spec §5.4), fused with the token reshape.

The LLM emits mixed audio ids in groups of five per 120 ms: two vq02 codes (0..1023) then
three vq06 codes offset by 1024. Group g = [a, b, c, d, e] becomes three token frames
    frame 3g   = [E[a]    | E[c + 1]]
    frame 3g+1 = [E[b]    | E[d + 1]]
    frame 3g+2 = [E[1024] | E[e + 1]]
of one shared table E [V = 5121, half] (row 1024 is the vq02 pad, rows 1025.. are vq06).
A ragged last group of k < 5 ids is completed upstream's way with the last 5 − k items of
[0, 0, 0, 1024, 1024, 1024]: a missing position j gets 0 for j < 2 and 1024 for j ≥ 2.

`mixed_embedding` does the whole chain (reshape, pad, gather, concat) in one kernel and writes
each frame straight into a caller's buffer (e.g. the encoder's input), for a ragged batch of
sequences packed into one id tensor. Its streaming form re-embeds only the groups touched by
newly appended ids: `first_ids[s]` = ids of sequence s already embedded, so the kernel starts
at group first_ids[s] // 5 (re-writing a group that was padded because it was incomplete).
`pair_embedding` is the second half alone (pairs [R, 2] already reshaped → [R, 2·half]).
Ids are not range-checked in the kernels (callers validate on the host); as a memory-safety
net the kernels clamp table rows into [0, V).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from editx.errors import InvalidInputError

from ._triton import (HAS_TRITON, check_shape, check_tensor, check_unit_stride, is_interpreted, next_pow2,
                      require_launchable, rows_per_program, tl, triton)

GROUP = 5
FRAMES_PER_GROUP = 3
VQ02_PAD = 1024
INT_DTYPES = (torch.int32, torch.int64)


# =======================================================================================
# References
# =======================================================================================
def mixed_to_pairs_ref(mixed: torch.Tensor) -> torch.Tensor:
    """Mixed ids [n] (LLM id − 65536) → pairs [3·ceil(n/5), 2] int64 (upstream `_reshape`)."""
    ids = mixed.long()
    ragged = ids.numel() % GROUP
    if ragged:
        tail = torch.tensor([0, 0, 0, VQ02_PAD, VQ02_PAD, VQ02_PAD][1 + ragged:], dtype=torch.long, device=ids.device)
        ids = torch.cat([ids, tail])
    groups = ids.view(-1, GROUP)  # [G, 5]
    vq02 = torch.cat([groups[:, :2], torch.full_like(groups[:, :1], VQ02_PAD)], dim=1)  # [G, 3]
    return torch.stack([vq02, groups[:, 2:] + 1], dim=-1).reshape(-1, 2)


def pair_embedding_ref(pairs: torch.Tensor, table: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """pairs [..., 2] int → [..., 2·half]: concat(E[pairs[..., 0]], E[pairs[..., 1]]).

    `clamp` maps negative ids to 0 first (upstream's non-streaming path)."""
    pairs = pairs.long().clamp(min=0) if clamp else pairs.long()
    return torch.cat([F.embedding(pairs[..., 0], table), F.embedding(pairs[..., 1], table)], dim=-1)


def mixed_embedding_ref(ids: torch.Tensor, cu_seqlens: torch.Tensor, table: torch.Tensor, out: torch.Tensor,
                        out_offsets: torch.Tensor, first_ids: torch.Tensor | None = None, id_offset: int = 0,
                        clamp: bool = False) -> torch.Tensor:
    """Plain-PyTorch `mixed_embedding` (same arguments, same writes into `out`). Returns out."""
    flat = out.view(-1)
    cu, offs = cu_seqlens.tolist(), out_offsets.tolist()
    firsts = [0] * (len(cu) - 1) if first_ids is None else first_ids.tolist()
    stride_t = out.stride(-2)
    for s in range(len(cu) - 1):
        seq = ids[cu[s]:cu[s + 1]].long() - id_offset
        if seq.numel() == 0:
            continue
        start_group = firsts[s] // GROUP
        rows = pair_embedding_ref(mixed_to_pairs_ref(seq), table, clamp)[FRAMES_PER_GROUP * start_group:]
        frame0 = FRAMES_PER_GROUP * start_group
        for f in range(rows.shape[0]):
            at = offs[s] + (frame0 + f) * stride_t
            flat[at:at + rows.shape[1]] = rows[f].to(out.dtype)
    return out


# =======================================================================================
# Kernels
# =======================================================================================
if HAS_TRITON:

    @triton.jit
    def _mixed_embedding_kernel(ids_ptr, cu_ptr, first_ptr, out_off_ptr, table_ptr, out_ptr,
                                stride_table, stride_out_t, id_offset, vocab,
                                HALF: tl.constexpr, BLOCK_E: tl.constexpr, CLAMP: tl.constexpr,
                                HAS_FIRST: tl.constexpr):
        # program (s, i): group first_ids[s] // 5 + i of sequence s -> its 3 frames.
        s = tl.program_id(0)
        i = tl.program_id(1)
        lo = tl.load(cu_ptr + s).to(tl.int64)
        n = tl.load(cu_ptr + s + 1).to(tl.int64) - lo
        g = i.to(tl.int64)
        if HAS_FIRST:
            g += tl.load(first_ptr + s).to(tl.int64) // 5
        if g * 5 < n:
            base = ids_ptr + lo + g * 5
            # missing tail positions: vq02 slots (j < 2) -> 0, vq06 slots (j >= 2) -> 1024
            a = tl.load(base + 0).to(tl.int64) - id_offset
            b = tl.load(base + 1, mask=g * 5 + 1 < n, other=id_offset).to(tl.int64) - id_offset
            c = tl.load(base + 2, mask=g * 5 + 2 < n, other=id_offset + 1024).to(tl.int64) - id_offset
            d = tl.load(base + 3, mask=g * 5 + 3 < n, other=id_offset + 1024).to(tl.int64) - id_offset
            e = tl.load(base + 4, mask=g * 5 + 4 < n, other=id_offset + 1024).to(tl.int64) - id_offset
            f = tl.arange(0, 4)  # 3 frames, padded to a power of two
            row02 = tl.where(f == 0, a, tl.where(f == 1, b, 1024))
            row06 = tl.where(f == 0, c, tl.where(f == 1, d, e)) + 1
            if CLAMP:  # upstream clamps the pairs at 0 (non-streaming path)
                row02 = tl.maximum(row02, 0)
                row06 = tl.maximum(row06, 0)
            row02 = tl.minimum(tl.maximum(row02, 0), vocab - 1)  # memory safety only
            row06 = tl.minimum(tl.maximum(row06, 0), vocab - 1)
            cols = tl.arange(0, BLOCK_E)
            frame_ok = f < 3
            m = frame_ok[:, None] & (cols[None, :] < HALF)
            v02 = tl.load(table_ptr + row02[:, None] * stride_table + cols[None, :], mask=m)
            v06 = tl.load(table_ptr + row06[:, None] * stride_table + cols[None, :], mask=m)
            out_row = (tl.load(out_off_ptr + s) + (g * 3 + f) * stride_out_t)[:, None] + cols[None, :]
            tl.store(out_ptr + out_row, v02.to(out_ptr.dtype.element_ty), mask=m)
            tl.store(out_ptr + out_row + HALF, v06.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _pair_embedding_kernel(pairs_ptr, table_ptr, out_ptr, n_rows, stride_pair, stride_table, stride_out, vocab,
                               HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
                               CLAMP: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = r < n_rows
        r64 = r.to(tl.int64)
        row0 = tl.load(pairs_ptr + r64 * stride_pair, mask=ok, other=0).to(tl.int64)
        row1 = tl.load(pairs_ptr + r64 * stride_pair + 1, mask=ok, other=0).to(tl.int64)
        if CLAMP:
            row0 = tl.maximum(row0, 0)
            row1 = tl.maximum(row1, 0)
        row0 = tl.minimum(tl.maximum(row0, 0), vocab - 1)  # memory safety only
        row1 = tl.minimum(tl.maximum(row1, 0), vocab - 1)
        cols = tl.arange(0, BLOCK_E)
        m = ok[:, None] & (cols[None, :] < HALF)
        v0 = tl.load(table_ptr + row0[:, None] * stride_table + cols[None, :], mask=m)
        v1 = tl.load(table_ptr + row1[:, None] * stride_table + cols[None, :], mask=m)
        dst = out_ptr + r64[:, None] * stride_out + cols[None, :]
        tl.store(dst, v0.to(out_ptr.dtype.element_ty), mask=m)
        tl.store(dst + HALF, v1.to(out_ptr.dtype.element_ty), mask=m)
else:  # pragma: no cover
    _mixed_embedding_kernel = _pair_embedding_kernel = None


# =======================================================================================
# Launchers
# =======================================================================================
def _check_table(table: torch.Tensor) -> None:
    check_tensor(table, "table", 2)
    check_unit_stride(table, "table")


def mixed_embedding(ids: torch.Tensor, cu_seqlens: torch.Tensor, table: torch.Tensor, out: torch.Tensor,
                    out_offsets: torch.Tensor, max_groups: int, first_ids: torch.Tensor | None = None,
                    id_offset: int = 0, clamp: bool = False) -> torch.Tensor:
    """Reshape + pad + embed a packed ragged batch of mixed-id sequences into `out`, in one kernel.

    ids [N] int32/int64 packed mixed ids (LLM id − `id_offset`); cu_seqlens [S+1] int32: sequence s
    owns ids[cu[s]:cu[s+1]]; table [V, half]; out: any float tensor whose last dim is 2·half and
    contiguous (its second-to-last stride is the frame stride); out_offsets [S] int64: element
    offset in `out` of sequence s's frame 0; first_ids [S] or None: ids already embedded (streaming
    append; the kernel starts at group first_ids[s] // 5); max_groups: host bound on the groups to
    (re)embed per sequence (sets the grid; no device sync). Returns `out`.
    """
    require_launchable(_mixed_embedding_kernel, ids.device, "mixed_embedding")
    check_tensor(ids, "ids", 1, INT_DTYPES)
    check_tensor(cu_seqlens, "cu_seqlens", 1, INT_DTYPES, ids.device)
    check_tensor(out_offsets, "out_offsets", 1, INT_DTYPES, ids.device)
    _check_table(table)
    check_tensor(out, "out", out.dim(), device=ids.device)
    if table.device != ids.device:
        raise InvalidInputError(f"table: on {table.device}, expected {ids.device}")
    if out.dim() < 2 or out.shape[-1] != 2 * table.shape[1]:
        raise InvalidInputError(f"out: last dim must be 2·{table.shape[1]}, got shape {tuple(out.shape)}")
    check_unit_stride(out, "out")
    n_seqs = cu_seqlens.shape[0] - 1
    check_shape(out_offsets, "out_offsets", (n_seqs,))
    if first_ids is not None:
        check_tensor(first_ids, "first_ids", 1, INT_DTYPES, ids.device)
        check_shape(first_ids, "first_ids", (n_seqs,))
    if n_seqs < 1 or max_groups < 1:
        return out
    half = table.shape[1]
    grid = (n_seqs, int(max_groups))
    _mixed_embedding_kernel[grid](
        ids, cu_seqlens, first_ids if first_ids is not None else cu_seqlens, out_offsets, table, out,
        table.stride(0), out.stride(-2), int(id_offset), table.shape[0],
        HALF=half, BLOCK_E=next_pow2(half), CLAMP=bool(clamp), HAS_FIRST=first_ids is not None,
    )
    return out


def pair_embedding(pairs: torch.Tensor, table: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """pairs [..., 2] int → [..., 2·half] in the table's dtype, one kernel (gather both codebooks + concat)."""
    require_launchable(_pair_embedding_kernel, pairs.device, "pair_embedding")
    check_tensor(pairs, "pairs", pairs.dim(), INT_DTYPES, table.device)
    _check_table(table)
    if pairs.dim() < 1 or pairs.shape[-1] != 2:
        raise InvalidInputError(f"pairs: expected shape [..., 2], got {tuple(pairs.shape)}")
    half = table.shape[1]
    flat = pairs.reshape(-1, 2)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    out = torch.empty(flat.shape[0], 2 * half, dtype=table.dtype, device=table.device)
    if flat.shape[0]:
        block_r = rows_per_program(2 * next_pow2(half), is_interpreted(_pair_embedding_kernel))
        _pair_embedding_kernel[(triton.cdiv(flat.shape[0], block_r),)](
            flat, table, out, flat.shape[0], flat.stride(0), table.stride(0), out.stride(0), table.shape[0],
            HALF=half, BLOCK_R=block_r, BLOCK_E=next_pow2(half), CLAMP=bool(clamp),
        )
    return out.view(*pairs.shape[:-1], 2 * half)
