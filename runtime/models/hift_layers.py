"""Building blocks of the HiFT vocoder: Snake, ResBlock, the conv f0 predictor.

Parameter names equal upstream's state-dict keys after weight-norm folding
(`convs1.0.weight`, `activations1.0.alpha`, `condnet.0.weight`, ...): the convs are
plain `nn.Conv1d`s holding the folded weight g·v/‖v‖ (spec §8.4).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..layers.activations import snake


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding keeping the length of a stride-1 conv ((k·d − d) / 2)."""
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """Snake activation x + sin²(αx)/(α + 1e-9), α linear-scale, one per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T]; one fused pass on CUDA (editx.kernels.snake), upstream's ops otherwise
        return snake(x, self.alpha)


class ResBlock(nn.Module):
    """HiFi-GAN residual block: per dilation, Snake → dilated conv → Snake → conv, residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size)) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T] -> [B, C, T]
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class F0Predictor(nn.Module):
    """Upstream `ConvRNNF0Predictor`: 5 × [Conv1d k3 p1 → ELU] → Linear → |·| (Hz)."""

    def __init__(self, in_channels: int, cond_channels: int, num_class: int = 1, n_convs: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            # ELU sits between the convs so the conv indices are 0, 2, 4, ... as upstream's Sequential.
            layers.append(nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1))
            layers.append(nn.ELU())
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: [B, C_mel, T] -> f0: [B, T]
        h = self.condnet(mel)  # [B, C_cond, T]
        return self.classifier(h.transpose(1, 2)).squeeze(-1).abs()
