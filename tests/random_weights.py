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


def init_step1_random_(model, seed: int = 0):
    """Step1 LLM test weights (the LLM tests' tolerances are measured on this scale).

    Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm gains 1 + N(0, 0.1):
    activations stay O(1) through the layers, so logits are well spread.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                values = 1 + 0.1 * torch.randn(param.shape, generator=gen)
            elif name.endswith("embed_tokens.weight"):
                values = torch.randn(param.shape, generator=gen)
            else:
                values = torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[1])
            param.copy_(values.to(param.dtype))
    return model
