"""Prepared data and what the model remembers of it: numpy and pydantic only.

Apart from ``jobs.data`` (which reads sources with pyarrow, about 0.5 s to import here):
a training process receives its data ready-made and never reads a source, so the modules
that run there (``jobs.worker``, ``jobs.local``, ``jobs.runtime``) import this one.
``jobs.data`` re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field


class DataInfo(BaseModel):
    """What the model must remember about its data; saved beside the weights."""

    task: str = Field(description="classification | regression")
    feature_names: list[str]
    label: str
    classes: list[str | int | float] = Field(
        default_factory=list, description="Label value of each output index (classification)."
    )
    feature_mean: list[float]
    feature_std: list[float]
    target_mean: float = 0.0
    target_std: float = 1.0
    n_train: int
    n_val: int
    fingerprint: str = Field(
        description="sha256 of the source's listing (every file's path, size and "
        "modification time), or of the bundled set's name."
    )
    columns: list[str] | None = Field(
        None, description="The source columns read, where they differ from feature_names."
    )
    input_shape: list[int] | None = Field(
        None,
        description="A tensor feature's row shape ([C, H, W] for images); feature_names are "
        "then its flattened elements, and Serve's V2 takes [rows, *input_shape].",
    )
    reading: Literal["in-memory", "streamed"] = Field(
        "in-memory",
        description="How training read the data: in the driver's memory, or streamed by Ray "
        "Data with a shard per data-parallel rank.",
    )

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def feature_columns(self) -> list[str]:
        """The columns a reader takes from the source."""
        return self.columns or self.feature_names

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def raw_features(self, standardised: np.ndarray) -> np.ndarray:
        """Rows in the units requests send (float32), from the standardised ones a training
        sees: what a logged model's input example and the quantization gate use."""
        mean, std = np.asarray(self.feature_mean), np.asarray(self.feature_std)
        return (standardised * std + mean).astype(np.float32)


@dataclass
class PreparedData:
    """Standardised feature matrices and encoded labels, held in memory."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    info: DataInfo
    stats_cached: bool = False  # in memory the statistics are computed on the table


@dataclass
class StreamedData:
    """A streamed source: what to read and the statistics of one pass.

    ``source`` is a ``jobs.sources.ResolvedSource`` (None for a bundled set), ``spec``
    the ``DataSpec``. Files are read by each rank itself (``jobs.rank_reader.RankRows``);
    an image folder or a bundled set through ``jobs.streaming.datasets_of``'s Ray Datasets
    in the process that reads (a training worker's driver, a trial's actor)."""

    info: DataInfo
    source: object
    spec: object
    stats_cached: bool
    # A file source's units and their rows per split: each rank reads its own
    # (``jobs.rank_reader``). Empty: Ray Data streams it (an image folder, a bundled set).
    units: list = field(default_factory=list)


TrainingData = PreparedData | StreamedData
