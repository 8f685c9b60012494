"""ONNX graph of the DiT velocity estimator: one velocity call of the flow-matching ODE.

Inputs (all float32 except where noted; B = batch, T = mel frames, both dynamic):
    x     [B, 80, T]   ODE state
    mask  [B, 1, T]    1.0 = valid frame, 0.0 = padding (keys only, as upstream's DiT)
    mu    [B, 80, T]   encoder states at mel rate
    t     [B]          ODE time in [0, 1]
    spks  [B, 80]      projected speaker embedding
    cond  [B, 80, T]   prompt mel in the first frames, zeros after
Output:
    velocity [B, 80, T]

The runtime calls it with the classifier-free-guidance pair as batch 2 ([conditional;
unconditional], see `CausalConditionalCFM`), so B = 2 is the shape profiles are built for.
The whole-sequence DiT has no positional encoding and no causal mask, so one graph
serves every length.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.flow import DiT

INPUTS = ("x", "mask", "mu", "t", "spks", "cond")
OUTPUTS = ("velocity",)
DYNAMIC_AXES = {
    "x": {0: "batch", 2: "frames"},
    "mask": {0: "batch", 2: "frames"},
    "mu": {0: "batch", 2: "frames"},
    "t": {0: "batch"},
    "spks": {0: "batch"},
    "cond": {0: "batch", 2: "frames"},
    "velocity": {0: "batch", 2: "frames"},
}


class DiTGraph(nn.Module):
    """`DiT.forward` with a tensor mask (the exported signature; see module doc)."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, x, mask, mu, t, spks, cond):  # noqa: D102 - shapes in the module doc
        return self.dit(x, mask, mu, t, spks, cond)


def example_inputs(dit: DiT, frames: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the exported signature (float32, CPU), for tracing and parity checks."""
    g = torch.Generator().manual_seed(seed)
    mel = dit.cfg.out_channels
    x, mu, cond = (torch.randn(batch, mel, frames, generator=g) for _ in range(3))
    mask = torch.ones(batch, 1, frames)
    t = torch.rand(batch, generator=g)
    spks = torch.randn(batch, mel, generator=g)
    return x, mask, mu, t, spks, cond


def output_shapes(dit: DiT, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Output shapes from input shapes (for preallocated output buffers)."""
    return {"velocity": tuple(inputs["x"])}


def input_shapes(dit: DiT, batch: int, frames: int) -> dict[str, tuple[int, ...]]:
    """Input shapes for `batch` × `frames` (what a TensorRT profile is made of)."""
    mel = dit.cfg.out_channels
    seq = (batch, mel, frames)
    return {"x": seq, "mask": (batch, 1, frames), "mu": seq, "t": (batch,), "spks": (batch, mel), "cond": seq}
