"""ONNX graph of the flow decoder's conformer encoder (whole sequence, no padding mask).

Input:
    xs           [B, T, D]     embedded token frames (`FlowModel.embed_tokens`, 25 Hz)
Output:
    encoder_out  [B, 2T, D]    states at mel rate (50 Hz), before `encoder_proj`

T is dynamic: the relative-position table, the lookahead pad and the ×2 upsample all
follow the traced length. The token embedding and the 512 → 80 projection around it
stay in torch (a gather and one matmul). Streaming chunks (`forward_chunk`) are not part
of this graph.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.flow import UpsampleConformerEncoderV2

INPUTS = ("xs",)
OUTPUTS = ("encoder_out",)
DYNAMIC_AXES = {"xs": {0: "batch", 1: "token_frames"}, "encoder_out": {0: "batch", 1: "mel_frames"}}


class FlowEncoderGraph(nn.Module):
    """`UpsampleConformerEncoderV2.forward(xs)` without lengths (every frame valid)."""

    def __init__(self, encoder: UpsampleConformerEncoderV2) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, xs):  # noqa: D102 - shapes in the module doc
        return self.encoder(xs)


def example_inputs(encoder: UpsampleConformerEncoderV2, frames: int, batch: int = 1,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, encoder.cfg.input_size, generator=g),)


def output_shapes(encoder: UpsampleConformerEncoderV2, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    b, t, _ = inputs["xs"]
    return {"encoder_out": (b, encoder.cfg.up_stride * t, encoder.cfg.output_size)}


def input_shapes(encoder: UpsampleConformerEncoderV2, batch: int, frames: int) -> dict[str, tuple[int, ...]]:
    return {"xs": (batch, frames, encoder.cfg.input_size)}
