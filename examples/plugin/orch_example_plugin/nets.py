"""The plugin's torch modules, kept apart from ``models`` so that checking params needs no
torch (the factories import this module when they build)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.body = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(self.norm(x))


class ResidualMLP(nn.Module):
    """One module with skip connections: DeepSpeed trains it data parallel (ZeRO 0-3)."""

    def __init__(self, n_in: int, n_out: int, width: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(blocks))
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class GatedLinear(nn.Module):
    """A linear layer gated by a sigmoid of another: one pipeline-partitionable layer."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.value = nn.Linear(fan_in, fan_out)
        self.gate = nn.Linear(fan_in, fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))
