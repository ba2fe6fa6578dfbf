"""Reading, checking and splitting the training data.

Sources are scikit-learn's bundled sets or Parquet/CSV files and directories, read with
pyarrow. The split is deterministic in ``data.seed``; standardisation is fitted on the
training split only and travels with the model (``DataInfo``), so serving sees raw features.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.errors import DataError
from jobs.prepared import DataInfo, PreparedData
from jobs.spec import DataSpec

__all__ = ["DataInfo", "DataSchema", "PreparedData", "prepare", "probe", "to_ray_datasets"]

_SKLEARN_TASKS = {
    "digits": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "iris": "classification",
    "diabetes": "regression",
}


@dataclass(frozen=True)
class DataSchema:
    """What a cheap look at the source tells: columns, chosen features and the task."""

    features: list[str]
    label: str
    task: str


def _local_path(source: str) -> Path:
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DataError(
            "data.source",
            f"unsupported scheme {parsed.scheme!r} in {source!r}; use sklearn://<set>, "
            "a local path or a file:// URI",
        )
    return Path(source)


def _file_format(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    suffixes = {p.suffix.lower() for p in files if not p.name.startswith((".", "_"))}
    if suffixes <= {".parquet", ".pq"} and suffixes:
        return "parquet"
    if suffixes <= {".csv"} and suffixes:
        return "csv"
    raise DataError(
        "data.source",
        f"{path} holds {sorted(suffixes) or 'no data files'}; expected .parquet or .csv files",
    )


def _open_dataset(source: str) -> pads.Dataset:
    path = _local_path(source)
    if not path.exists():
        raise DataError("data.source", f"{path} does not exist; check the path in data.source")
    try:
        return pads.dataset(str(path), format=_file_format(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError("data.source", f"cannot read {path}: {exc}") from None


def _sklearn_table(name: str) -> pa.Table:
    import sklearn.datasets as skd

    bunch = getattr(skd, f"load_{name}")()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [
        f"f{i}" for i in range(bunch.data.shape[1])
    ]
    columns = {n: bunch.data[:, i].astype(np.float64) for i, n in enumerate(names)}
    columns["target"] = bunch.target
    return pa.table(columns)


def _infer_task(label_type: pa.DataType) -> str:
    return "regression" if pa.types.is_floating(label_type) else "classification"


def _columns_hint(names: list[str], columns: list[str]) -> str:
    """'did you mean ...' for the first unknown name, then the columns (at most 12)."""
    close = difflib.get_close_matches(names[0], columns, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(columns[:12]) + (
        f", ... ({len(columns) - 12} more)" if len(columns) > 12 else ""
    )
    return f"{hint}columns are: {shown}"


def probe(spec: DataSpec) -> DataSchema:
    """Check the source, label and feature columns without loading the rows.

    Raises:
        DataError: naming the field and the fix (missing file, unknown column, ...).
    """
    if spec.source.startswith("sklearn://"):
        name = spec.source.removeprefix("sklearn://")
        schema = _sklearn_table(name).schema
        task = _SKLEARN_TASKS[name]
    else:
        schema = _open_dataset(spec.source).schema
        task = None
    columns = list(schema.names)
    if spec.label not in columns:
        raise DataError(
            "data.label",
            f"label column {spec.label!r} is not in the data; "
            + _columns_hint([spec.label], columns),
        )
    features = (
        spec.features if spec.features is not None else [c for c in columns if c != spec.label]
    )
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(
            "data.features",
            f"unknown feature column(s) {missing}; {_columns_hint(missing, columns)}",
        )
    if spec.label in features:
        raise DataError("data.features", f"the label {spec.label!r} cannot also be a feature")
    if not features:
        raise DataError("data.features", "no feature columns; list at least one")
    non_numeric = [
        f
        for f in features
        if not (
            pa.types.is_integer(schema.field(f).type)
            or pa.types.is_floating(schema.field(f).type)
            or pa.types.is_boolean(schema.field(f).type)
        )
    ]
    if non_numeric:
        raise DataError(
            "data.features",
            f"feature column(s) {non_numeric} are not numeric; encode them or leave them out "
            "of data.features",
        )
    task = spec.task or task or _infer_task(schema.field(spec.label).type)
    if task == "regression" and not (
        pa.types.is_integer(schema.field(spec.label).type)
        or pa.types.is_floating(schema.field(spec.label).type)
    ):
        raise DataError(
            "data.task",
            f"regression needs a numeric label, but {spec.label!r} is "
            f"{schema.field(spec.label).type}; use task: classification",
        )
    return DataSchema(features=features, label=spec.label, task=task)


def _read_table(spec: DataSpec, schema: DataSchema) -> pa.Table:
    if spec.source.startswith("sklearn://"):
        return _sklearn_table(spec.source.removeprefix("sklearn://"))
    return _open_dataset(spec.source).to_table(columns=[*schema.features, schema.label])


def _fingerprint(table: pa.Table) -> str:
    digest = hashlib.sha256()
    for batch in table.to_batches():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        digest.update(sink.getvalue())
    return digest.hexdigest()


def prepare(spec: DataSpec) -> PreparedData:
    """Load, split by seed, encode labels and standardise features on the training split."""
    schema = probe(spec)
    table = _read_table(spec, schema)
    label_col = table.column(schema.label)
    if label_col.null_count:
        raise DataError(
            "data.label", f"{label_col.null_count} rows have no label; drop or fill them"
        )
    x = np.column_stack(
        [table.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in schema.features]
    )
    if np.isnan(x).any():
        bad = [f for f, n in zip(schema.features, np.isnan(x).sum(0), strict=True) if n]
        raise DataError("data.features", f"missing values in column(s) {bad}; fill or drop them")
    n = len(x)
    n_val = int(round(n * spec.validation_split))
    if n_val < 1 or n - n_val < 1:
        raise DataError(
            "data.validation_split",
            f"{spec.validation_split} of {n} rows leaves an empty split; change it or add data",
        )
    order = np.random.default_rng(spec.seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]

    classes: list = []
    target_mean, target_std = 0.0, 1.0
    if schema.task == "classification":
        uniques = pc.unique(label_col).to_pylist()
        classes = sorted(uniques, key=lambda v: (str(type(v)), v))
        index = {v: i for i, v in enumerate(classes)}
        y = np.array([index[v] for v in label_col.to_pylist()], dtype=np.int64)
        if len(classes) < 2:
            raise DataError("data.label", f"classification needs 2+ classes, found {classes}")
    else:
        y = label_col.to_numpy(zero_copy_only=False).astype(np.float64)
        target_mean = float(y[train_idx].mean())
        target_std = float(y[train_idx].std()) or 1.0
        y = ((y - target_mean) / target_std).astype(np.float32)

    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std[std == 0] = 1.0
    x = ((x - mean) / std).astype(np.float32)
    info = DataInfo(
        task=schema.task,
        feature_names=schema.features,
        label=schema.label,
        classes=classes,
        feature_mean=mean.tolist(),
        feature_std=std.tolist(),
        target_mean=target_mean,
        target_std=target_std,
        n_train=len(train_idx),
        n_val=n_val,
        fingerprint=_fingerprint(table),
    )
    return PreparedData(x[train_idx], y[train_idx], x[val_idx], y[val_idx], info)


def to_ray_datasets(data: PreparedData) -> dict:
    """Train and validation splits as Ray Datasets with ``x`` (tensor) and ``y`` columns."""
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    def table(x: np.ndarray, y: np.ndarray) -> pa.Table:
        return pa.table({"x": ArrowTensorArray.from_numpy(x), "y": y})

    datasets = {
        "train": ray.data.from_arrow(table(data.x_train, data.y_train)),
        "val": ray.data.from_arrow(table(data.x_val, data.y_val)),
    }
    for ds in datasets.values():  # re-read every epoch: keep worker logs free of bars
        ds.context.enable_progress_bars = False
        ds.context.print_on_execution_start = False
    return datasets
