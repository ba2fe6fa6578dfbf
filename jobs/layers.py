"""The torch modules that the model zoo's builders put in layer lists.

Kept apart from ``jobs.models`` so that describing and validating models (the spec, the
JSON Schema, ``orch validate``) never imports torch: a builder imports this module when it
builds a model.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class ConvBlock(nn.Module):
    """Conv + ReLU + pooling; the first block also reshapes flat features into an image."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, pool: bool, reshape_to=None):
        super().__init__()
        self.reshape_to = reshape_to
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reshape_to is not None:
            x = x.reshape(x.shape[0], *self.reshape_to)
        return self.pool(self.act(self.conv(x)))


class FeatureTokenizer(nn.Module):
    """Each scalar feature becomes a token (value * weight + bias), plus a [CLS] token."""

    def __init__(self, n_features: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, d_model) * d_model**-0.5)
        self.bias = nn.Parameter(torch.zeros(n_features, d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.weight + self.bias
        return torch.cat([self.cls.expand(x.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)


class ClsHead(nn.Module):
    """Layer norm and a linear read-out of the [CLS] token."""

    def __init__(self, d_model: int, n_outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, n_outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(tokens[:, 0]))
