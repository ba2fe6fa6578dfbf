"""Reading, checking and splitting the training data: in memory, or streamed.

Sources are scikit-learn's bundled sets or Parquet/CSV data (``jobs.sources``: files,
folders, globs, lists; local or object storage). ``load`` picks the path
(``data.streaming``): small local data is read into the driver's memory, which is fastest
for it (float32 features filled column by column, the driver's peak about twice the
feature bytes); large or remote data is streamed by Ray Data (``jobs.streaming``), a shard
per data-parallel rank, after one distributed statistics pass (``jobs.stats``, cached).

Either way the split is a hash of each row (``jobs.rows``) and standardisation is fitted on
the training split only; both travel with the model (``DataInfo``), so serving sees raw
features.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pydantic import BaseModel, Field

from jobs.bundled import sklearn_table
from jobs.errors import DataError
from jobs.prepared import DataInfo, PreparedData, StreamedData, TrainingData
from jobs.rows import class_order, encode_labels, feature_matrix, validation_mask
from jobs.sources import ResolvedSource, filter_expression, open_dataset, resolve
from jobs.spec import DataSpec
from jobs.stats import Moments, Partial, cache_key, cached, merge, store
from jobs.tensors import (
    IMAGE_COLUMN,
    declared_shape,
    flat_names,
    image_classes,
    is_tensor,
    per_channel,
    read_image_folder,
)

__all__ = [
    "DataInfo",
    "DataSchema",
    "PreparedData",
    "StreamedData",
    "TrainingData",
    "load",
    "prepare",
    "probe",
    "stream",
]

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

    features: list[str]  # the columns read
    label: str
    task: str
    source: ResolvedSource | None = None  # None for a bundled set or an image folder
    input_shape: list[int] | None = None  # a tensor feature's row shape (jobs.tensors)
    images: Path | None = None  # an image folder (data.image_size)

    @property
    def feature_names(self) -> list[str]:
        """The model's inputs: the columns, or a tensor column's flattened elements."""
        if self.input_shape is None:
            return self.features
        return flat_names(self.features[0], self.input_shape)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _first_schema(dataset: pads.Dataset) -> pa.Schema:
    fragment = next(iter(dataset.get_fragments()))
    try:
        return fragment.physical_schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError("data.source", f"cannot read {fragment.path}: {_line(exc)}") from None


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _check_same_schema(dataset: pads.Dataset, source: ResolvedSource, columns: list[str]) -> None:
    """Every file has the columns the first one has, with a type of the same kind.

    Raises:
        DataError: naming the first file that differs and the column.
    """
    fragments = list(dataset.get_fragments())
    if len(fragments) < 2:
        return

    def schema_of(fragment) -> pa.Schema:
        try:
            return fragment.physical_schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError("data.source", f"cannot read {fragment.path}: {_line(exc)}") from None

    workers = 16 if source.remote else 4
    with ThreadPoolExecutor(workers) as pool:
        schemas = list(pool.map(schema_of, fragments))
    partition_columns = set(dataset.schema.names) - set(schemas[0].names)
    first = schemas[0]
    for fragment, schema in zip(fragments[1:], schemas[1:], strict=True):
        for name in columns:
            if name in partition_columns:
                continue
            if name not in schema.names:
                raise DataError(
                    "data.source",
                    f"{fragment.path} has no column {name!r}, which {fragments[0].path} has; "
                    "give every file the same columns",
                )
            a, b = first.field(name).type, schema.field(name).type
            if a != b and not (_numeric(a) and _numeric(b)):
                raise DataError(
                    "data.source",
                    f"{fragment.path}: column {name!r} is {b}, but {a} in {fragments[0].path}; "
                    "give every file the same column types",
                )


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
    """Check the source, label and feature columns without loading the rows (a listing
    and the files' schemas: for Parquet its footers, for CSV its header blocks).

    Raises:
        DataError: naming the field and the fix (missing file, unknown column, ...).
    """
    if spec.image_size is not None:
        return _probe_images(spec)
    source, partition_columns = None, set()
    if spec.sklearn_set:
        schema = sklearn_table(spec.sklearn_set).schema
        task = _SKLEARN_TASKS[spec.sklearn_set]
    else:
        source = resolve(spec.source)
        dataset = open_dataset(source)
        schema = dataset.schema
        task = None
        if source.partition_base is not None:
            partition_columns = set(schema.names) - set(_first_schema(dataset).names)
    columns = list(schema.names)
    if spec.label not in columns:
        raise DataError(
            "data.label",
            f"label column {spec.label!r} is not in the data; "
            + _columns_hint([spec.label], columns),
        )
    features = spec.features
    if features is None:  # partition folders filter rows; they are features when listed
        features = [c for c in columns if c != spec.label and c not in partition_columns]
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
    tensors = [f for f in features if is_tensor(schema.field(f).type)]
    input_shape = _input_shape(spec, tensors, features, schema)
    non_numeric = [f for f in features if not _numeric(schema.field(f).type) and f not in tensors]
    if non_numeric:
        raise DataError(
            "data.features",
            f"feature column(s) {non_numeric} are not numeric; encode them or leave them out "
            "of data.features",
        )
    for term in spec.filter or []:
        if term[0] not in columns:
            raise DataError(
                "data.filter", f"unknown column {term[0]!r}; {_columns_hint([term[0]], columns)}"
            )
    label_type = schema.field(spec.label).type
    task = spec.task or task or _infer_task(label_type)
    if task == "regression" and not (
        pa.types.is_integer(label_type) or pa.types.is_floating(label_type)
    ):
        raise DataError(
            "data.task",
            f"regression needs a numeric label, but {spec.label!r} is {label_type}; use "
            "task: classification",
        )
    if source is not None:
        _check_same_schema(dataset, source, [*features, spec.label])
    return DataSchema(features, spec.label, task, source, input_shape)


def _input_shape(
    spec: DataSpec, tensors: list[str], features: list[str], schema: pa.Schema
) -> list[int] | None:
    """A tensor feature's row shape: data.input_shape, or the column type's.

    Raises:
        DataError: a tensor column beside other features, a shape the type contradicts,
            or a list column without data.input_shape.
    """
    if not tensors:
        if spec.input_shape is not None:
            raise DataError(
                "data.input_shape",
                f"no feature is a tensor column (features: {features[:5]}); leave "
                "data.input_shape out, or name a list or tensor column in data.features",
            )
        return None
    if len(features) > 1:
        raise DataError(
            "data.features",
            f"tensor column {tensors[0]!r} must be the only feature (features: {features[:5]}); "
            f"list it alone: data.features: [{tensors[0]}]",
        )
    declared = declared_shape(schema.field(tensors[0]).type)
    shape = spec.input_shape or declared
    if shape is None:
        raise DataError(
            "data.input_shape",
            f"{tensors[0]!r} is a list column of any length; give its row shape, e.g. "
            "data.input_shape: [3, 32, 32]",
        )
    if declared is not None and math.prod(shape) != math.prod(declared):
        raise DataError(
            "data.input_shape",
            f"{shape} holds {math.prod(shape)} values, but each row of {tensors[0]!r} holds "
            f"{math.prod(declared)} ({declared}); give a shape of that size",
        )
    return list(shape)


def _probe_images(spec: DataSpec) -> DataSchema:
    folder = Path(spec.source).expanduser()
    image_classes(folder)  # raises without class subfolders of images
    channels = 3 if spec.image_mode == "RGB" else 1
    shape = [channels, *spec.image_size]
    label = spec.label
    return DataSchema([IMAGE_COLUMN], label, "classification", None, shape, folder.resolve())


def _read_table(spec: DataSpec, schema: DataSchema) -> pa.Table:
    """The label and feature columns (and nothing else) of every file, file by file so that
    a corrupt file or a ragged CSV row is named."""
    if schema.images is not None:
        return read_image_folder(schema.images, spec.image_size, spec.image_mode, schema.label)
    if schema.source is None:
        return sklearn_table(spec.sklearn_set).select([*schema.features, schema.label])
    dataset, columns, expression = (
        open_dataset(schema.source),
        [*schema.features, schema.label],
        filter_expression(spec.filter),
    )
    tables = []
    for fragment in dataset.get_fragments():
        try:
            tables.append(
                fragment.to_table(schema=dataset.schema, columns=columns, filter=expression)
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise DataError("data.source", f"cannot read {fragment.path}: {_line(exc)}") from None
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError("data.source", f"the files do not combine: {_line(exc)}") from None


def _fingerprint(spec: DataSpec, schema: DataSchema) -> str:
    if schema.images is not None:  # every image's path, size and time, and how it is read
        files = (p for p in schema.images.rglob("*") if p.is_file())
        listing = sorted(
            (str(p.relative_to(schema.images)), st.st_size, st.st_mtime_ns)
            for p, st in ((p, p.stat()) for p in files)
        )
        shape = [spec.image_size, spec.image_mode]
        return hashlib.sha256(json.dumps([listing, shape]).encode()).hexdigest()
    if schema.source is None:
        import sklearn

        return hashlib.sha256(f"{spec.source} {sklearn.__version__}".encode()).hexdigest()
    return schema.source.fingerprint()


def _depends_on(spec: DataSpec, schema: DataSchema) -> dict:
    return {
        "features": schema.features,
        "label": schema.label,
        "task": schema.task,
        "seed": spec.seed,
        "validation_split": spec.validation_split,
        "filter": spec.filter,
        "input_shape": schema.input_shape,
        "units": "rows per row group",  # what a file source's cached statistics hold
    }


def _info(spec: DataSpec, schema: DataSchema, stats, reading: str) -> DataInfo:
    mean, std = stats.feature_mean, stats.feature_std
    if schema.input_shape is not None and len(schema.input_shape) >= 2:
        mean, std = per_channel(mean, std, schema.input_shape)  # images: per channel
    return DataInfo(
        task=schema.task,
        feature_names=schema.feature_names,
        columns=schema.features if schema.input_shape else None,
        input_shape=schema.input_shape,
        label=schema.label,
        classes=stats.classes,
        feature_mean=mean,
        feature_std=std,
        target_mean=stats.target_mean,
        target_std=stats.target_std,
        n_train=stats.n_train,
        n_val=stats.n_val,
        fingerprint=_fingerprint(spec, schema),
        reading=reading,
    )


def prepare(spec: DataSpec, schema: DataSchema | None = None) -> PreparedData:
    """Read into memory, split, encode labels and standardise features on the training
    split. The features are float32 from the start, filled column by column."""
    schema = schema or probe(spec)
    table = _read_table(spec, schema)
    labels = table.column(schema.label)
    if labels.null_count:
        raise DataError("data.label", f"{labels.null_count} rows have no label; drop or fill them")
    shape = schema.input_shape
    val = validation_mask(table, schema.features, spec.seed, spec.validation_split, shape)
    x_train = feature_matrix(table, schema.features, ~val, shape)
    x_val = feature_matrix(table, schema.features, val, shape)
    if schema.task == "classification":
        classes = class_order(pc.unique(labels).to_pylist())
        target = Moments()
    else:
        classes = []
        target = Moments.of([labels.to_numpy().astype(np.float64)[~val]])
    moments = Moments.of([x_train[:, j] for j in range(x_train.shape[1])])
    stats = merge([Partial(moments, target, int(val.sum()), classes)], schema.task)
    if schema.task == "classification":
        y = encode_labels(labels, stats.classes)
    else:
        y = (labels.to_numpy().astype(np.float64) - stats.target_mean) / stats.target_std
        y = y.astype(np.float32)
    del table, labels
    info = _info(spec, schema, stats, "in-memory")
    for x in (x_train, x_val):  # in place: no second copy of the features
        x -= np.asarray(info.feature_mean, dtype=np.float32)
        x /= np.asarray(info.feature_std, dtype=np.float32)
    return PreparedData(x_train, y[~val], x_val, y[val], info)


def stream(spec: DataSpec, schema: DataSchema | None = None) -> StreamedData:
    """The streamed path: statistics from one pass of Ray Data tasks (or the cache), and
    what every reader needs to build its datasets. Reads no row in this process."""
    from jobs.streaming import scan_statistics

    schema = schema or probe(spec)
    key = cache_key(_fingerprint(spec, schema), **_depends_on(spec, schema))
    stats = cached(key)
    if stats is None:
        stats = scan_statistics(
            schema.source, spec, schema.features, schema.task, schema.input_shape
        )
        store(key, stats)
    return StreamedData(
        _info(spec, schema, stats, "streamed"), schema.source, spec, stats.cached, stats.units
    )


def streams(spec: DataSpec, schema: DataSchema) -> bool:
    """Whether ``load`` streams: ``data.streaming``, or for auto a source on object
    storage or larger than ``data.stream_above_mb``."""
    if spec.streaming != "auto":
        return bool(spec.streaming)
    if schema.images is not None:  # the files' bytes (decoded pixels may take more)
        files = (p for p in schema.images.rglob("*") if p.is_file())
        return sum(p.stat().st_size for p in files) > spec.stream_above_mb * 2**20
    if schema.source is None:
        return False
    return schema.source.remote or schema.source.total_bytes > spec.stream_above_mb * 2**20


def load(spec: DataSpec, before_stream: Callable[[], None] | None = None) -> TrainingData:
    """The spec's data on the path ``data.streaming`` picks (``streams``).

    ``before_stream``: called before the statistics pass of a streamed source, which runs
    on Ray (the caller's wait for its connection, when it reads while connecting).
    """
    schema = probe(spec)
    if not streams(spec, schema):
        return prepare(spec, schema)
    if before_stream is not None:
        before_stream()
    return stream(spec, schema)


SAMPLE_ROWS = 20_000


def load_sample(spec: DataSpec, rows: int = SAMPLE_ROWS) -> PreparedData:
    """The data as ``load`` gives it, with at most ``rows`` rows of each split held in
    memory: what the quantization gate measures a model on. In memory: the splits' first
    rows; streamed: the first rows each split's stream gives (statistics from the cache)."""
    data = load(spec)
    if isinstance(data, PreparedData):
        return PreparedData(
            data.x_train[:rows], data.y_train[:rows], data.x_val[:rows], data.y_val[:rows],
            data.info,
        )  # fmt: skip
    train, val = _first_rows(data, "train", rows), _first_rows(data, "val", rows)
    return PreparedData(train["x"], train["y"], val["x"], val["y"], data.info)


def example_rows(data: TrainingData, n: int) -> np.ndarray:
    """``n`` validation rows in the units requests send (a logged model's input example):
    in memory the split's first rows, streamed the first the validation stream gives."""
    if isinstance(data, PreparedData):
        return data.info.raw_features(data.x_val[:n])
    return data.info.raw_features(_first_rows(data, "val", n)["x"])


def _first_rows(data: StreamedData, split: str, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of a streamed split, ``{"x", "y"}``: read in this process for
    files (``jobs.rank_reader``), through Ray Data otherwise."""
    from jobs.rank_reader import RankRows, reads_by_rank

    if not reads_by_rank(data):
        from jobs.streaming import datasets_of

        ds = datasets_of(data, data.spec.cpus_per_worker)[split]
        return ds.limit(n).take_batch(n, batch_format="numpy")
    xs, ys, held = [], [], 0
    for block in RankRows(data, split, 0, 1).blocks(None):
        xs.append(block["x"][: n - held])
        ys.append(block["y"][: n - held])
        held += len(ys[-1])
        if held >= n:
            break
    return {"x": np.concatenate(xs), "y": np.concatenate(ys)}


class DataSummary(BaseModel):
    """How a run read its data (``RunResult.data``)."""

    reading: Literal["in-memory", "streamed"] = Field(
        description="in-memory: the driver read it; streamed: a shard per rank (files: each "
        "rank reads its own; image folders and bundled sets: Ray Data)."
    )
    n_train: int = Field(description="Training rows.")
    n_val: int = Field(description="Validation rows.")
    fingerprint: str = Field(description="The source listing's sha256 (DataInfo.fingerprint).")
    stats_cached: bool = Field(
        description="The statistics came from the cache (no pass over the data this run)."
    )

    @classmethod
    def of(cls, data: TrainingData) -> DataSummary:
        info = data.info
        return cls(
            reading=info.reading, n_train=info.n_train, n_val=info.n_val,
            fingerprint=info.fingerprint, stats_cached=data.stats_cached,
        )  # fmt: skip
