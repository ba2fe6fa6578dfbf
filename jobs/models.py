"""The model zoo: each entry turns validated params and the data's shape into a layer list.

A layer list is what DeepSpeed's ``PipelineModule`` partitions into stages, and
``nn.Sequential(*layers)`` is the same network for data parallelism and for the exported
model, so state-dict keys ("<layer index>.<param>") agree across all three.

Adding a model type is one decorated function::

    class TinyParams(ZooParams):
        width: int = Field(32, description="Hidden width.")

    @register_model("tiny", TinyParams)
    def tiny(params: TinyParams, shape: DataShape) -> list[nn.Module]:
        return [nn.Sequential(nn.Linear(shape.n_features, params.width), nn.ReLU()),
                nn.Linear(params.width, shape.n_outputs)]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about the data: feature count and output width."""

    n_features: int
    n_outputs: int


class ZooParams(BaseModel):
    """Base of every model's params: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    params_model: type[ZooParams]
    build: Callable[[ZooParams, DataShape], list[nn.Module]]


MODEL_ZOO: dict[str, ZooEntry] = {}

# A neutral shape (64 features, a square image) used to count layers before data is read.
_PROBE_SHAPE = DataShape(n_features=64, n_outputs=2)


def register_model(name: str, params_model: type[ZooParams]):
    """Decorator: add a builder to the zoo under ``name`` (the spec's ``model.type``)."""

    def decorate(build):
        if name in MODEL_ZOO:
            raise ValueError(f"model type {name!r} is already registered")
        MODEL_ZOO[name] = ZooEntry(name, params_model, build)
        return build

    return decorate


def get_entry(model_type: str) -> ZooEntry:
    try:
        return MODEL_ZOO[model_type]
    except KeyError:
        raise ValueError(
            f"unknown model type {model_type!r}; available: {', '.join(sorted(MODEL_ZOO))}"
        ) from None


def build_layers(model_type: str, params: dict, shape: DataShape) -> list[nn.Module]:
    """The model as a list of layers; ``params`` are validated against the entry's model."""
    entry = get_entry(model_type)
    return entry.build(entry.params_model.model_validate(params), shape)


def count_layers(model_type: str, params: dict) -> int:
    """How many pipeline-partitionable layers the model has (independent of the data)."""
    return len(build_layers(model_type, params, _PROBE_SHAPE))


# --------------------------------------------------------------------------- mlp


class MLPParams(ZooParams):
    hidden_sizes: list[int] = Field([128, 64], description="Width of each hidden layer.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    activation: str = Field("relu", description="relu | gelu | tanh")

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive ints, got {sizes}")
        return sizes

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, name: str) -> str:
        if name not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}")
        return name


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@register_model("mlp", MLPParams)
def mlp(params: MLPParams, shape: DataShape) -> list[nn.Module]:
    """Fully connected blocks (Linear, activation, dropout), one pipeline layer each."""
    layers: list[nn.Module] = []
    width = shape.n_features
    for hidden in params.hidden_sizes:
        layers.append(
            nn.Sequential(
                nn.Linear(width, hidden),
                _ACTIVATIONS[params.activation](),
                nn.Dropout(params.dropout),
            )
        )
        width = hidden
    layers.append(nn.Linear(width, shape.n_outputs))
    return layers


# --------------------------------------------------------------------------- cnn


class CNNParams(ZooParams):
    channels: list[int] = Field([16, 32], description="Output channels of each conv block.")
    kernel_size: int = Field(3, ge=1, description="Conv kernel size (odd keeps the image size).")
    image_shape: list[int] | None = Field(
        None,
        description="[channels, height, width] of one sample. null = one channel, square "
        "image inferred from the feature count (64 features -> 1x8x8).",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the classifier.")

    @field_validator("channels")
    @classmethod
    def _positive(cls, channels: list[int]) -> list[int]:
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        return channels

    @field_validator("image_shape")
    @classmethod
    def _three_dims(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and (len(shape) != 3 or any(d < 1 for d in shape)):
            raise ValueError(f"image_shape must be [channels, height, width], got {shape}")
        return shape


def image_shape_for(params: CNNParams, n_features: int) -> tuple[int, int, int]:
    """The (C, H, W) a flat feature vector is viewed as; raises ValueError if it cannot be."""
    if params.image_shape is not None:
        c, h, w = params.image_shape
        if c * h * w != n_features:
            raise ValueError(
                f"image_shape {params.image_shape} holds {c * h * w} values but the data has "
                f"{n_features} features; set model.params.image_shape to match"
            )
        return c, h, w
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(
            f"{n_features} features are not a square image; set model.params.image_shape "
            "to [channels, height, width]"
        )
    return 1, side, side


class _ConvBlock(nn.Module):
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


@register_model("cnn", CNNParams)
def cnn(params: CNNParams, shape: DataShape) -> list[nn.Module]:
    """Conv blocks over image-shaped inputs, then a linear classifier."""
    c, h, w = image_shape_for(params, shape.n_features)
    layers: list[nn.Module] = []
    in_ch = c
    for i, out_ch in enumerate(params.channels):
        pool = min(h, w) >= 4  # pool while the image is large enough to halve
        layers.append(
            _ConvBlock(
                in_ch, out_ch, params.kernel_size, pool, reshape_to=(c, h, w) if i == 0 else None
            )
        )
        if pool:
            h, w = h // 2, w // 2
        in_ch = out_ch
    layers.append(
        nn.Sequential(
            nn.Flatten(), nn.Dropout(params.dropout), nn.Linear(in_ch * h * w, shape.n_outputs)
        )
    )
    return layers


# --------------------------------------------------------------------------- transformer


class TransformerParams(ZooParams):
    d_model: int = Field(64, ge=8, description="Token width.")
    num_heads: int = Field(4, ge=1, description="Attention heads; must divide d_model.")
    num_layers: int = Field(2, ge=1, description="Encoder layers.")
    dim_feedforward: int = Field(128, ge=1, description="Hidden width of each feed-forward block.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the encoder.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerParams:
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")
        return self


class _FeatureTokenizer(nn.Module):
    """Each scalar feature becomes a token (value * weight + bias), plus a [CLS] token."""

    def __init__(self, n_features: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, d_model) * d_model**-0.5)
        self.bias = nn.Parameter(torch.zeros(n_features, d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.weight + self.bias
        return torch.cat([self.cls.expand(x.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)


class _ClsHead(nn.Module):
    def __init__(self, d_model: int, n_outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, n_outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(tokens[:, 0]))


@register_model("transformer", TransformerParams)
def transformer(params: TransformerParams, shape: DataShape) -> list[nn.Module]:
    """A small encoder over feature tokens (FT-Transformer style), read out at [CLS]."""
    layers: list[nn.Module] = [_FeatureTokenizer(shape.n_features, params.d_model)]
    for _ in range(params.num_layers):
        layers.append(
            nn.TransformerEncoderLayer(
                params.d_model,
                params.num_heads,
                params.dim_feedforward,
                params.dropout,
                batch_first=True,
                norm_first=True,
            )
        )
    layers.append(_ClsHead(params.d_model, shape.n_outputs))
    return layers
