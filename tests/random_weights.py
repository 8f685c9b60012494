"""Random weights with realistic scales for unit tests of model code.

Unlike a fresh upstream init (adaLN / gates zeroed), every parameter is non-trivial, so a
wrong index or a dropped term changes the output. Matrices ~ N(0, 1/fan_in), norm gains
1 + N(0, 0.1), everything else (biases, scales) ~ N(0, 0.1).
"""
from __future__ import annotations

import math

import torch


def fill_random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()
