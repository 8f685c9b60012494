"""Deterministic random weights for the dummy presets (no checkpoint files at all).

Scales keep activations finite and O(1) through every real-size stack (32 LLM layers,
16 DiT blocks, 50 SANM blocks): matrices ~ N(0, 1/fan_in), residual-branch output
projections further scaled down by 1/sqrt(2·depth) (GPT-2 style), norm gains 1,
biases 0, embeddings ~ N(0, 1). Draws come from a generator on the parameter's own
device, so `dummy:full` initialises 3.5 B parameters on the GPU in well under a second.
"""
from __future__ import annotations

import math
import zlib

import torch
from torch import nn

# Output projections of residual branches (upstream names across our models).
_RESIDUAL_OUT = ("o_proj", "down_proj", "attn.proj", "mlp.fc2", "linear_out", "w_2", "linear_pos")


def _fan_in(shape: torch.Size) -> int:
    return max(1, math.prod(shape[1:]))


def randomize_(module: nn.Module, seed: int, depth: int = 1) -> nn.Module:
    """Overwrite every parameter of `module` in place with seeded random values (see module doc).

    Each parameter gets its own generator seeded from (seed, name), so the values do not
    depend on parameter order or device.
    """
    residual_scale = 1.0 / math.sqrt(2.0 * max(depth, 1))
    with torch.no_grad():
        for name, p in module.named_parameters():
            gen = torch.Generator(device=p.device)
            gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
            _fill(name, p, gen, residual_scale)
    return module


def _fill(name: str, p: torch.Tensor, gen: torch.Generator, residual_scale: float) -> None:
    leaf = name.rsplit(".", 1)[-1]
    if p.dim() <= 1:
        if leaf == "bias":
            p.zero_()
        else:  # norm gains, Snake alphas, per-channel scales
            p.fill_(1.0)
        return
    noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
    if "embed" in name and "proj" not in name:
        std = 1.0
    else:
        std = 1.0 / math.sqrt(_fan_in(p.shape))
        if any(key in name for key in _RESIDUAL_OUT):
            std *= residual_scale
    p.copy_(noise * std)
