"""Two models a package adds to orch, named in YAML by their entry-point names.

- ``residual-mlp`` returns one ``nn.Module`` of its own (skip connections, layer norm):
  data parallel and ZeRO 0-3, not pipeline parallel (DeepSpeed cannot split a module).
- ``gated-mlp`` returns a list of layers: DeepSpeed's ``PipelineModule`` splits it into
  stages, so it also trains pipeline parallel.

Params are pydantic models (``model_plugin``): ``orch validate`` checks them, with
did-you-mean, without importing torch (torch is imported when a model is built).
``residual-mlp`` also reports a metric of its own, ``val_brier`` (lower is better), which
``tune.metric`` and ``register.promote_if`` can name like the trainer's.
"""

from __future__ import annotations

from pydantic import Field

from jobs.models import DataShape, ZooParams
from jobs.plugins import PluginMetric, model_plugin


class ResidualParams(ZooParams):
    width: int = Field(64, gt=0, description="Width of every residual block.")
    blocks: int = Field(2, ge=1, le=16, description="How many residual blocks.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside each block.")


def _any_shape(params: ResidualParams, shape: DataShape) -> None:
    """Any number of features and outputs fits (the check keeps validation torch-free)."""


def brier_rows(outputs, targets):
    """Each row's Brier score: the squared distance between the predicted class
    probabilities and the one-hot label (regression: the squared error, in standardised
    units). One value per row; orch averages them over every validation row."""
    import torch

    if outputs.shape[-1] == 1:
        return (outputs.squeeze(-1) - targets.float()) ** 2
    onehot = torch.nn.functional.one_hot(targets.long(), outputs.shape[-1]).float()
    return ((torch.softmax(outputs, dim=-1) - onehot) ** 2).sum(dim=-1)


@model_plugin(
    ResidualParams,
    check=_any_shape,
    metrics={"brier": PluginMetric(brier_rows, mode="min")},
)
def residual_mlp(params: ResidualParams, shape: DataShape):
    from orch_example_plugin.nets import ResidualMLP

    return ResidualMLP(
        shape.n_features, shape.n_outputs, params.width, params.blocks, params.dropout
    )


class GatedParams(ZooParams):
    hidden_sizes: list[int] = Field([64], min_length=1, description="Width of each gated layer.")


@model_plugin(GatedParams)
def gated_mlp(params: GatedParams, shape: DataShape):
    from torch import nn

    from orch_example_plugin.nets import GatedLinear

    widths = [shape.n_features, *params.hidden_sizes]
    layers = [GatedLinear(a, b) for a, b in zip(widths, widths[1:], strict=False)]
    return [*layers, nn.Linear(widths[-1], shape.n_outputs)]
