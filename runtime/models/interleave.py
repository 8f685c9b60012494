"""Audio-code layouts around the LLM: vq02/vq06 codes <-> LLM ids <-> decoder "mixed" ids.

The audio tokenizer emits two streams: vq02 (1024 codes, ~16.7 Hz) and vq06 (4096
codes, 25 Hz). The LLM sees them interleaved in groups of 2 vq02 + 3 vq06 codes
(one group = 120 ms = 5 LLM tokens), as ids of the `<audio_K>` added tokens:

    K = vq02 code            for the two vq02 slots  (K in 0..1023)
    K = 1024 + vq06 code     for the three vq06 slots (K in 1024..5119)
    LLM id = 65536 + K

Trailing codes that do not fill a whole group are dropped (spec §3.4/§3.5). The flow
decoder consumes "mixed" ids = LLM id − 65536 = K (spec §4.6, fixtures README §6).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..errors import InvalidInputError

AUDIO_ID_OFFSET = 65536  # id of <audio_0> in the text vocabulary
VQ02_CODEBOOK = 1024
VQ06_CODEBOOK = 4096
VQ06_MIXED_OFFSET = VQ02_CODEBOOK  # vq06 code c is <audio_{1024 + c}>
VQ02_PER_GROUP = 2
VQ06_PER_GROUP = 3
GROUP_SIZE = VQ02_PER_GROUP + VQ06_PER_GROUP


def _as_int_list(codes: Iterable[int] | torch.Tensor, name: str) -> list[int]:
    if isinstance(codes, torch.Tensor):
        if codes.dim() != 1 or codes.is_floating_point():
            raise InvalidInputError(f"{name}: expected a 1-D integer tensor, got {tuple(codes.shape)} {codes.dtype}")
        return [int(c) for c in codes.tolist()]
    if isinstance(codes, (str, bytes)):
        raise InvalidInputError(f"{name}: expected a sequence of integer codes, got {type(codes).__name__}")
    try:
        out = [int(c) for c in codes]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}: expected a sequence of integer codes ({exc})") from exc
    return out


def _check_range(codes: list[int], size: int, name: str) -> None:
    bad = [c for c in codes if not 0 <= c < size]
    if bad:
        raise InvalidInputError(f"{name}: codes must lie in [0, {size}), got {bad[:5]}")


def group_count(n_vq02: int, n_vq06: int) -> int:
    """Number of whole 2+3 groups the two streams fill (trailing codes are dropped)."""
    return min(n_vq02 // VQ02_PER_GROUP, n_vq06 // VQ06_PER_GROUP)


def interleave_mixed(vq02_codes: Sequence[int] | torch.Tensor, vq06_codes: Sequence[int] | torch.Tensor) -> list[int]:
    """Raw codes -> mixed ids K (0..5119), 2 vq02 then 3 (1024 + vq06) per group.

    vq02_codes: [N02] ints in 0..1023; vq06_codes: [N06] ints in 0..4095.
    Returns 5 * min(N02 // 2, N06 // 3) ids.
    """
    vq02 = _as_int_list(vq02_codes, "vq02_codes")
    vq06 = _as_int_list(vq06_codes, "vq06_codes")
    _check_range(vq02, VQ02_CODEBOOK, "vq02_codes")
    _check_range(vq06, VQ06_CODEBOOK, "vq06_codes")
    out: list[int] = []
    for g in range(group_count(len(vq02), len(vq06))):
        out.extend(vq02[VQ02_PER_GROUP * g: VQ02_PER_GROUP * (g + 1)])
        out.extend(VQ06_MIXED_OFFSET + c for c in vq06[VQ06_PER_GROUP * g: VQ06_PER_GROUP * (g + 1)])
    return out


def interleave_vq0206(vq02_codes: Sequence[int] | torch.Tensor, vq06_codes: Sequence[int] | torch.Tensor) -> list[int]:
    """Raw codes -> LLM ids (upstream `wav2token`'s interleave): mixed id + 65536."""
    return [AUDIO_ID_OFFSET + k for k in interleave_mixed(vq02_codes, vq06_codes)]


def audio_token_str(vq02_codes: Sequence[int] | torch.Tensor, vq06_codes: Sequence[int] | torch.Tensor) -> str:
    """Raw codes -> the prompt string `<audio_K>...` (upstream `merge_vq0206_to_token_str`), no separators."""
    return mixed_to_token_str(interleave_mixed(vq02_codes, vq06_codes))


def mixed_to_token_str(mixed_ids: Iterable[int]) -> str:
    """Mixed ids K -> concatenated `<audio_K>` strings."""
    return "".join(f"<audio_{int(k)}>" for k in mixed_ids)


def llm_ids_to_mixed(llm_ids: Sequence[int] | torch.Tensor) -> list[int] | torch.Tensor:
    """LLM ids -> decoder mixed ids (id − 65536), as upstream does before token2wav.

    Like upstream this does not check that the ids are audio ids: a text id becomes a
    negative mixed id (the decoder decides what to do with it). A tensor input gives a
    tensor of the same shape; any other sequence gives a list.
    """
    if isinstance(llm_ids, torch.Tensor):
        if llm_ids.is_floating_point():
            raise InvalidInputError(f"llm_ids: expected an integer tensor, got {llm_ids.dtype}")
        return llm_ids - AUDIO_ID_OFFSET
    return [i - AUDIO_ID_OFFSET for i in _as_int_list(llm_ids, "llm_ids")]


def mixed_to_llm_ids(mixed_ids: Iterable[int]) -> list[int]:
    """Mixed ids K -> LLM ids 65536 + K."""
    return [AUDIO_ID_OFFSET + int(k) for k in mixed_ids]


def is_audio_llm_id(token_id: int) -> bool:
    """True when `token_id` is one of the 5120 `<audio_K>` ids the codecs use."""
    return AUDIO_ID_OFFSET <= token_id < AUDIO_ID_OFFSET + VQ02_CODEBOOK + VQ06_CODEBOOK
