"""The statistics a model needs of its data, from one pass over the blocks where they lie.

Each block gives partial moments of its training rows (count, mean, sum of squared
deviations, in float64) and its label values; the partials are merged with Chan's
parallel formula, which is as exact as a two-pass NumPy computation (no catastrophic
cancellation from sums of squares). The pass runs as Ray Data tasks on a streamed source
(``jobs.streaming``) and over the one table of an in-memory one: the same functions.

Results are cached by the source's fingerprint and what they depend on (columns, label,
task, split), under ``$ORCH_HOME/data-stats``: a study's trials and a rerun of the
pipeline do not scan the data again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import DataError
from jobs.rows import class_order, feature_columns, validation_mask_of


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of some columns (float64)."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    @classmethod
    def of(cls, columns: list[np.ndarray]) -> Moments:
        if not columns or len(columns[0]) == 0:
            return cls()
        mean = np.array([c.mean(dtype=np.float64) for c in columns])
        m2 = np.array(
            [np.square(c.astype(np.float64) - m).sum() for c, m in zip(columns, mean, strict=True)]
        )
        return cls(len(columns[0]), mean, m2)

    def merge(self, other: Moments) -> Moments:
        """Chan, Golub and LeVeque's pairwise update."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)


@dataclass
class Partial:
    """What one block contributes."""

    features: Moments
    target: Moments
    n_val: int
    classes: list = field(default_factory=list)

    @classmethod
    def empty(cls) -> Partial:
        return cls(Moments(), Moments(), 0, [])

    def merge(self, other: Partial) -> Partial:
        """Both blocks' contribution (a file's from its units')."""
        return Partial(
            self.features.merge(other.features),
            self.target.merge(other.target),
            self.n_val + other.n_val,
            list(dict.fromkeys([*self.classes, *other.classes])),
        )


def partial(
    table: pa.Table,
    features: list[str],
    label: str,
    task: str,
    seed: int,
    fraction: float,
    input_shape: list[int] | None = None,
) -> Partial:
    """One block's partial statistics.

    Raises:
        DataError: missing labels or feature values, or a non-numeric regression label.
    """
    labels = table.column(label)
    if labels.null_count:
        raise DataError("data.label", f"{labels.null_count} rows have no label; drop or fill them")
    columns = feature_columns(table, features, input_shape)
    val = validation_mask_of(columns, table.num_rows, seed, fraction)
    train = ~val
    feature_moments = Moments.of([column[train] for column in columns])
    target = Moments()
    classes: list = []
    if task == "classification":
        classes = pc.unique(labels).to_pylist()
    else:
        y = labels.to_numpy().astype(np.float64)[train]
        target = Moments.of([y])
    return Partial(feature_moments, target, int(val.sum()), classes)


@dataclass
class SourceStats:
    """The merged statistics: what ``DataInfo`` records, and whether they were cached."""

    n_train: int
    n_val: int
    feature_mean: list[float]
    feature_std: list[float]
    classes: list
    target_mean: float = 0.0
    target_std: float = 1.0
    cached: bool = False
    # A file source's units ([path, row group, training rows, validation rows]), which
    # lets each rank find its own rows (``jobs.rank_reader``); empty for other sources.
    units: list = field(default_factory=list)


def merge(partials: Iterable[Partial], task: str) -> SourceStats:
    """The statistics of all blocks.

    Raises:
        DataError: an empty split, or fewer than 2 classes.
    """
    features, target, n_val, classes = Moments(), Moments(), 0, set()
    for part in partials:
        features = features.merge(part.features)
        target = target.merge(part.target)
        n_val += part.n_val
        classes.update(part.classes)
    if features.n == 0 or n_val == 0:
        raise DataError(
            "data.validation_split",
            f"the split leaves {features.n} training and {n_val} validation rows; change "
            "data.validation_split or add data",
        )
    std = features.std
    std[std == 0] = 1.0
    stats = SourceStats(
        n_train=features.n,
        n_val=n_val,
        feature_mean=features.mean.tolist(),
        feature_std=std.tolist(),
        classes=class_order(list(classes)),
    )
    if task == "classification":
        if len(stats.classes) < 2:
            raise DataError("data.label", f"classification needs 2+ classes, found {stats.classes}")
    else:
        stats.target_mean = float(target.mean[0])
        stats.target_std = float(target.std[0]) or 1.0
    return stats


# ---------------------------------------------------------------------------- the cache


def cache_key(fingerprint: str, **depends_on) -> str:
    return hashlib.sha256(json.dumps([fingerprint, depends_on], default=str).encode()).hexdigest()


def _cache_dir() -> Path:
    home = os.environ.get("ORCH_HOME") or os.path.join(os.getcwd(), ".orch")
    return Path(home) / "data-stats"


def cached(key: str) -> SourceStats | None:
    try:
        stats = SourceStats(**json.loads((_cache_dir() / f"{key}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    stats.cached = True
    return stats


def store(key: str, stats: SourceStats) -> None:
    """Write the statistics whole or not at all (a rename); a cache that cannot be written
    only costs the next run a scan."""
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{key}.{os.getpid()}"
        staging.write_text(json.dumps({**asdict(stats), "cached": False}))
        staging.replace(folder / f"{key}.json")
    except OSError:
        pass
