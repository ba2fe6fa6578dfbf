"""The trained model as one plain torch module: raw features in, predictions out.

Standardisation (fitted on the training split) sits inside, so clients send raw feature
values; classification returns class probabilities (index order = ``DataInfo.classes``),
regression returns values in the label's original units.
"""

from __future__ import annotations

import torch
from torch import nn

from jobs.models import DataShape, build_network
from jobs.prepared import DataInfo
from jobs.spec import ModelSpec


class InferenceModel(nn.Module):
    def __init__(self, net: nn.Module, info: DataInfo):
        super().__init__()
        self.net = net
        self.classification = info.task == "classification"
        self.register_buffer("mean", torch.tensor(info.feature_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(info.feature_std, dtype=torch.float32))
        self.register_buffer(
            "target_scale", torch.tensor([info.target_mean, info.target_std], dtype=torch.float32)
        )

    @classmethod
    def build(cls, model: ModelSpec, info: DataInfo) -> InferenceModel:
        shape = DataShape.of(info)
        return cls(build_network(model.type, model.params, shape), info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x - self.mean) / self.std)
        if self.classification:
            return torch.softmax(out, dim=-1)
        return out.squeeze(-1) * self.target_scale[1] + self.target_scale[0]
