"""The vq02 front end's global CMVN file (`am.mvn`, Kaldi nnet1 text format).

The file is a tiny Kaldi network whose `<AddShift>` component holds the negated feature
means and whose `<Rescale>` component holds the inverse standard deviations:

    <Nnet>
    <Splice> 560 560
    [ 0 ]
    <AddShift> 560 560
    <LearnRateCoef> 0 [ -11.42 -8.24 ... ]
    <Rescale> 560 560
    <LearnRateCoef> 0 [ 0.31 0.27 ... ]
    </Nnet>

Features are normalised as `(x + shift) * scale`. We read the bracketed vector that
follows each component tag wherever the line breaks fall, and refuse a file whose
components are missing, empty, of different lengths, non-numeric or non-finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, InvalidInputError


@dataclass(slots=True, frozen=True)
class Cmvn:
    """Global CMVN: `shift [D]` (negated means) and `scale [D]` (inverse std), float32."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self) -> None:
        if self.shift.shape != self.scale.shape or self.shift.dim() != 1:
            raise CheckpointError(
                f"CMVN: shift {tuple(self.shift.shape)} and scale {tuple(self.scale.shape)} must be equal 1-D shapes"
            )

    @property
    def dim(self) -> int:
        return int(self.shift.shape[0])

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        """`(feats + shift) * scale` over the last dim of `feats [..., D']`, D' <= D (upstream uses the first D')."""
        d = feats.shape[-1]
        if d > self.dim:
            raise InvalidInputError(f"feats: last dim {d} exceeds the CMVN dimension {self.dim}")
        shift = self.shift[:d].to(device=feats.device, dtype=feats.dtype)
        scale = self.scale[:d].to(device=feats.device, dtype=feats.dtype)
        return (feats + shift) * scale


def read_am_mvn(path: str | Path) -> Cmvn:
    """Parse a Kaldi-nnet-text `am.mvn` into a `Cmvn`; CheckpointError naming the file if malformed."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing CMVN file: expected {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read CMVN file {p}: {exc}") from exc
    return parse_am_mvn(text, source=str(p))


def parse_am_mvn(text: str, source: str = "am.mvn") -> Cmvn:
    """Parse the text of an `am.mvn` (see the module doc)."""
    tokens = text.split()
    shift = _component_vector(tokens, "<AddShift>", source)
    scale = _component_vector(tokens, "<Rescale>", source)
    if shift.shape != scale.shape:
        raise CheckpointError(
            f"{source}: <AddShift> has {shift.shape[0]} values but <Rescale> has {scale.shape[0]}"
        )
    return Cmvn(shift=shift, scale=scale)


def _component_vector(tokens: list[str], tag: str, source: str) -> torch.Tensor:
    """The `[ ... ]` vector after `tag`, checked against the component's declared output size."""
    try:
        at = tokens.index(tag)
    except ValueError:
        raise CheckpointError(f"{source}: no {tag} component") from None
    declared = _declared_size(tokens, at)
    try:
        open_at = tokens.index("[", at)
        close_at = tokens.index("]", open_at)
    except ValueError:
        raise CheckpointError(f"{source}: {tag} is not followed by a bracketed [ ... ] vector") from None
    nxt = _next_tag(tokens, at + 1)
    if nxt is not None and nxt < open_at and tokens[nxt] != "<LearnRateCoef>":
        raise CheckpointError(f"{source}: {tag} has no vector before the next component {tokens[nxt]}")
    body = tokens[open_at + 1 : close_at]
    if not body:
        raise CheckpointError(f"{source}: {tag} vector is empty")
    try:
        values = torch.tensor([float(v) for v in body], dtype=torch.float64)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {tag} vector holds a non-number ({exc})") from exc
    if not torch.isfinite(values).all():
        raise CheckpointError(f"{source}: {tag} vector holds NaN or Inf")
    if declared is not None and declared != values.shape[0]:
        raise CheckpointError(f"{source}: {tag} declares {declared} values but holds {values.shape[0]}")
    return values.to(torch.float32)


def _declared_size(tokens: list[str], at: int) -> int | None:
    """`<Tag> out in`: the output size, when the two integers are present."""
    if at + 2 < len(tokens) and tokens[at + 1].isdigit() and tokens[at + 2].isdigit():
        return int(tokens[at + 1])
    return None


def _next_tag(tokens: list[str], start: int) -> int | None:
    for i in range(start, len(tokens)):
        if tokens[i].startswith("<"):
            return i
    return None
