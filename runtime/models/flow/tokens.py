"""Mixed vq02/vq06 token sequences → time-aligned codebook pairs (upstream `_reshape`).

The LLM emits groups of five ids per 120 ms: two vq02 codes (0..1023) then three
vq06 codes offset by 1024. The flow model wants one (vq02, vq06) pair per 40 ms
token frame, so each group [a, b, c, d, e] becomes three frames
(a, c+1), (b, d+1), (PAD=1024, e+1): the vq02 stream gets a pad after every pair
and the vq06 column moves to embedding rows 1025..5120 (row 1024 is the vq02 pad).
"""
from __future__ import annotations

import torch

from ...errors import InvalidInputError

GROUP = 5  # mixed ids per group (2 vq02 + 3 vq06)
FRAMES_PER_GROUP = 3  # token frames per group
VQ02_PAD = 1024  # embedding row of the vq02 padding slot
# A ragged tail of k ids is completed with the last (5 - k) items of this list (upstream rule).
_PAD_SOURCE = (0, 0, 0, 1024, 1024, 1024)


def mixed_len(frames: int) -> int:
    """Mixed ids holding `frames` token frames, rounded down to whole groups: (frames // 3) * 5."""
    return (int(frames) // FRAMES_PER_GROUP) * GROUP


def reshape_mixed_tokens(mixed: torch.Tensor) -> torch.Tensor:
    """Mixed ids `[N]` or `[B, N]` (LLM id − 65536) → pairs `[T, 2]` / `[B, T, 2]` int64, T = 3·ceil(N/5).

    Column 0 is the vq02 code (1024 = pad), column 1 the vq06 embedding row (vq06 + 1025).
    Values are not range-checked here (see `check_pair_ids`).
    """
    if not isinstance(mixed, torch.Tensor):
        mixed = torch.as_tensor(mixed)
    if mixed.dim() not in (1, 2):
        raise InvalidInputError(f"mixed tokens: expected shape [N] or [B, N], got {tuple(mixed.shape)}")
    if mixed.dtype.is_floating_point or mixed.dtype == torch.bool or mixed.is_complex():
        raise InvalidInputError(f"mixed tokens: expected an integer tensor, got {mixed.dtype}")
    if mixed.shape[-1] == 0:
        raise InvalidInputError("mixed tokens: the sequence is empty")
    squeeze = mixed.dim() == 1
    ids = mixed.reshape(-1, mixed.shape[-1]).long()  # ids: [B, N]
    ragged = ids.shape[1] % GROUP
    if ragged:
        tail = torch.tensor(_PAD_SOURCE[len(_PAD_SOURCE) - (GROUP - ragged):], dtype=torch.long, device=ids.device)
        ids = torch.cat([ids, tail.expand(ids.shape[0], -1)], dim=1)
    groups = ids.view(ids.shape[0], -1, GROUP)  # groups: [B, G, 5]
    pad = torch.full_like(groups[..., :1], VQ02_PAD)
    vq02 = torch.cat([groups[..., :2], pad], dim=2)  # [B, G, 3]
    vq06 = groups[..., 2:] + 1  # 1024 + code -> 1025 + code, [B, G, 3]
    pairs = torch.stack([vq02, vq06], dim=-1).reshape(ids.shape[0], -1, 2)  # [B, 3G, 2]
    return pairs[0] if squeeze else pairs


def check_pair_ids(pairs: torch.Tensor, vocab_size: int, what: str, allow_negative: bool) -> None:
    """Raise InvalidInputError unless `pairs` is an int tensor `[B, T, 2]`, T ≥ 1, ids < vocab_size.

    Negative ids are allowed only where upstream clamps them to 0 (non-streaming path).
    """
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 3 or pairs.shape[-1] != 2:
        shape = tuple(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs).__name__
        raise InvalidInputError(f"{what}: expected token pairs of shape [B, T, 2], got {shape}")
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool or pairs.is_complex():
        raise InvalidInputError(f"{what}: expected an integer tensor, got {pairs.dtype}")
    if pairs.numel() == 0:
        raise InvalidInputError(f"{what}: empty (shape {tuple(pairs.shape)}); at least one token frame is needed")
    top = int(pairs.max())
    if top >= vocab_size:
        raise InvalidInputError(
            f"{what}: token id {top} is out of range (the flow embedding has {vocab_size} rows: "
            f"0..1023 vq02, 1024 pad, 1025..{vocab_size - 1} vq06); were non-audio LLM ids passed?")
    if not allow_negative:
        low = int(pairs.min())
        if low < 0:
            raise InvalidInputError(
                f"{what}: negative token id {low} (mixed ids must be LLM audio ids - 65536)")
