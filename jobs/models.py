"""The model zoo: each entry turns validated params and the data's shape into a layer list
(or, for a plugin's model, one ``nn.Module``); ``get_entry`` also finds installed plugins
and import paths (``jobs.plugins``).

A layer list is what DeepSpeed's ``PipelineModule`` partitions into stages, and
``nn.Sequential(*layers)`` is the same network for data parallelism and for the exported
model, so state-dict keys ("<layer index>.<param>") agree across all three.

Adding a model type is one decorated function::

    class TinyParams(ZooParams):
        width: int = Field(32, description="Hidden width.")

    @register_model("tiny", TinyParams)
    def tiny(params: TinyParams, shape: DataShape) -> list[nn.Module]:
        from torch import nn

        return [nn.Sequential(nn.Linear(shape.n_features, params.width), nn.ReLU()),
                nn.Linear(params.width, shape.n_outputs)]

Describing and checking models imports no torch (``orch validate`` and ``orch schema``
answer at editor speed): the params are plain pydantic models, and builders import torch
(and ``jobs.layers``) when they build. Whether params fit the data's shape is a torch-free
``check`` where an entry gives one; an entry without one is built to find out.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs import plugins
from jobs.plugins import PluginSource

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about the data: feature count and output width, and for
    tensor inputs (images, sequences) the shape of one row, e.g. (3, 32, 32): the model
    gets each row flattened (``n_features`` values) and views it as that shape."""

    n_features: int
    n_outputs: int
    input_shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, info) -> DataShape:
        """The shape of a ``jobs.prepared.DataInfo``'s data."""
        shape = tuple(info.input_shape) if info.input_shape else None
        return cls(info.n_features, info.n_outputs, shape)


class ZooParams(BaseModel):
    """Base of every model's params: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    params_model: type[BaseModel]
    # Returns a list of layers (pipeline-partitionable) or one nn.Module (data parallel).
    build: Callable[[ZooParams, DataShape], list[nn.Module] | nn.Module]
    # Raises ValueError when the params cannot take data of a shape, without torch;
    # None = build the layers to find out.
    check: Callable[[ZooParams, DataShape], None] | None = None
    # Where a plugin's code comes from (registered with each model version); None: the zoo.
    source: PluginSource | None = None
    # A plugin's own per-row loss (jobs.plugins.model_plugin); None: the task's.
    loss: Callable | None = None
    # A plugin's own validation metrics, reported as val_<name> (jobs.plugins.PluginMetric).
    metrics: dict[str, plugins.PluginMetric] = field(default_factory=dict)

    def metric_modes(self) -> dict[str, str]:
        """``val_<name>`` -> ``max``/``min`` for each of the plugin's own metrics."""
        return {f"val_{name}": metric.mode for name, metric in self.metrics.items()}


MODEL_ZOO: dict[str, ZooEntry] = {}

# A neutral shape (64 features, a square image) used to count layers before data is read.
_PROBE_SHAPE = DataShape(n_features=64, n_outputs=2)


def register_model(
    name: str,
    params_model: type[ZooParams],
    check: Callable[[ZooParams, DataShape], None] | None = None,
):
    """Decorator: add a builder to the zoo under ``name`` (the spec's ``model.type``).

    Args:
        name: the spec's ``model.type``.
        params_model: validates ``model.params``.
        check: raises ValueError when validated params cannot take data of a shape, without
            building the model; ``orch validate`` uses it to stay torch-free. None = the
            check builds the layers.
    """

    def decorate(build):
        if name in MODEL_ZOO:
            raise ValueError(f"model type {name!r} is already registered")
        MODEL_ZOO[name] = ZooEntry(name, params_model, build, check)
        return build

    return decorate


def get_entry(model_type: str) -> ZooEntry:
    """The entry for a spec's ``model.type``: the zoo's, an installed plugin's (entry point
    ``orch.models``) or an import path's (``jobs.plugins``), in that order.

    Raises:
        ValueError: unknown (did-you-mean over the zoo and the installed plugins), or a
            plugin that cannot be loaded; the message says the fix.
    """
    if model_type in MODEL_ZOO:
        return MODEL_ZOO[model_type]
    try:
        found = plugins.load(model_type)
    except plugins.UnknownPlugin:
        known = sorted(MODEL_ZOO) + plugins.installed_names()
        close = difflib.get_close_matches(model_type, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown model type {model_type!r}; {hint}available: {', '.join(known)} (zoo "
            "and installed plugins), or an import path package.module:function"
        ) from None
    return ZooEntry(
        model_type,
        found.params_model,
        found.factory,
        found.check,
        found.source,
        found.loss,
        found.metrics,
    )


def known_entries() -> dict[str, ZooEntry]:
    """The zoo and every installed plugin that loads (for ``orch schema``); a plugin that
    fails to import is left out here and reported when a spec names it."""
    entries = dict(MODEL_ZOO)
    for name in plugins.installed_names():
        if name not in entries:
            try:
                entries[name] = get_entry(name)
            except ValueError:
                continue
    return entries


def build_network(model_type: str, params: dict, shape: DataShape) -> nn.Module:
    """The model as one module: a factory's own ``nn.Module``, or ``nn.Sequential`` over
    its layers (the same state-dict keys as the pipeline's "<layer>.<param>")."""
    from torch import nn

    built = _built(model_type, params, shape)
    return nn.Sequential(*built) if isinstance(built, list) else built


def build_layers(model_type: str, params: dict, shape: DataShape) -> list[nn.Module]:
    """The model as a list of layers, for DeepSpeed's ``PipelineModule``.

    Raises:
        ValueError: the factory returns one module that is not an ``nn.Sequential``: it
            cannot be split into pipeline stages.
    """
    from torch import nn

    built = _built(model_type, params, shape)
    if isinstance(built, nn.Sequential):
        return list(built)
    if isinstance(built, list):
        return built
    raise ValueError(
        f"model {model_type!r} is one {type(built).__name__} module, which DeepSpeed cannot "
        "split into pipeline stages: use train.deepspeed.pipeline_stages: 1, or return a "
        "list of layers from its factory"
    )


def _built(model_type: str, params: dict, shape: DataShape) -> nn.Module | list[nn.Module]:
    """Build and check what the factory returns: an ``nn.Module`` or a non-empty list of
    them. A plugin's own exception becomes one line naming the plugin."""
    from torch import nn

    entry = get_entry(model_type)
    validated = entry.params_model.model_validate(params)
    try:
        built = entry.build(validated, shape)
    except Exception as exc:  # the factory is the plugin's code: name it, not our stack
        if model_type in MODEL_ZOO:
            raise
        raise ValueError(
            f"model {model_type!r}: its factory raised {plugins.described(exc)}; "
            "check model.params against the plugin's documentation"
        ) from None
    if isinstance(built, tuple):
        built = list(built)
    if isinstance(built, nn.Module):
        return built
    if isinstance(built, list) and built and all(isinstance(b, nn.Module) for b in built):
        return built
    raise ValueError(
        f"model {model_type!r}: its factory returned {type(built).__name__}, not an "
        "nn.Module or a non-empty list of nn.Module layers; return one of those"
    )


def check_fits(model_type: str, params: dict, shape: DataShape) -> None:
    """Raise ValueError when the model cannot take data of ``shape``.

    Torch-free for entries registered with a ``check``; any other entry is built (which
    also checks that a plugin's factory returns a module or layers).
    """
    entry = get_entry(model_type)
    validated = entry.params_model.model_validate(params)
    if entry.check is None:
        _built(model_type, params, shape)
    else:
        entry.check(validated, shape)


def count_layers(model_type: str, params: dict) -> int:
    """How many pipeline-partitionable layers the model has (independent of the data).

    Builds the model, so it imports torch: the spec asks only when it has pipeline stages.

    Raises:
        ValueError: the model is one module that cannot be split (``build_layers``).
    """
    return len(build_layers(model_type, params, _PROBE_SHAPE))


def _any_shape(params: ZooParams, shape: DataShape) -> None:
    """The entry takes any number of features and outputs."""


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


_ACTIVATIONS = ("relu", "gelu", "tanh")


@register_model("mlp", MLPParams, check=_any_shape)
def mlp(params: MLPParams, shape: DataShape) -> list[nn.Module]:
    """Fully connected blocks (Linear, activation, dropout), one pipeline layer each."""
    from torch import nn

    from jobs.layers import ACTIVATIONS

    layers: list[nn.Module] = []
    width = shape.n_features
    for hidden in params.hidden_sizes:
        layers.append(
            nn.Sequential(
                nn.Linear(width, hidden),
                ACTIVATIONS[params.activation](),
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


def image_shape_for(
    params: CNNParams, n_features: int, input_shape: tuple[int, ...] | None = None
) -> tuple[int, int, int]:
    """The (C, H, W) a flat feature vector is viewed as: model.params.image_shape, else the
    data's own image shape (an image folder, a [C, H, W] tensor column), else a square of
    one channel. Raises ValueError if it cannot be."""
    if params.image_shape is None and input_shape is not None and len(input_shape) == 3:
        return tuple(input_shape)
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


def _cnn_fits(params: CNNParams, shape: DataShape) -> None:
    image_shape_for(params, shape.n_features, shape.input_shape)


@register_model("cnn", CNNParams, check=_cnn_fits)
def cnn(params: CNNParams, shape: DataShape) -> list[nn.Module]:
    """Conv blocks over image-shaped inputs, then a linear classifier."""
    from torch import nn

    from jobs.layers import ConvBlock

    c, h, w = image_shape_for(params, shape.n_features, shape.input_shape)
    layers: list[nn.Module] = []
    in_ch = c
    for i, out_ch in enumerate(params.channels):
        pool = min(h, w) >= 4  # pool while the image is large enough to halve
        layers.append(
            ConvBlock(
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


@register_model("transformer", TransformerParams, check=_any_shape)
def transformer(params: TransformerParams, shape: DataShape) -> list[nn.Module]:
    """A small encoder over feature tokens (FT-Transformer style), read out at [CLS]."""
    from torch import nn

    from jobs.layers import ClsHead, FeatureTokenizer

    layers: list[nn.Module] = [FeatureTokenizer(shape.n_features, params.d_model)]
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
    layers.append(ClsHead(params.d_model, shape.n_outputs))
    return layers
