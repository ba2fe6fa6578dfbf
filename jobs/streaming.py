"""Ray Data on the streamed path: the statistics pass, and the sources Ray Data streams.

- ``scan_statistics`` is the one distributed pass that computes what ``DataInfo`` needs
  (``jobs.stats``): a file source one task per file (``_file_partials``), which also
  counts every unit's rows per split for the ranks that read files themselves
  (``jobs.rank_reader``); an image folder or a bundled set block by block.
- ``datasets`` builds (lazily: nothing is read until a worker iterates) the training and
  validation datasets of an image folder or a bundled set (and, for the data bench's
  comparison, of files through ``read_parquet`` / ``read_csv``): one ``map_batches``
  that keeps one split's rows (``jobs.rows.SplitRows``: a hash of each row, no order needed) as
  float32 features, standardised, and encoded labels.

CPU: Ray Data's tasks need CPU while the training workers hold theirs (with every CPU
held by Train a streamed read waits forever: ray-project/ray #41603). Each task here asks
for ``DATA_TASK_CPU`` and each dataset's executor is capped at ``data_cpus`` (the
training workers leave that much of their own share for it: ``data.cpus_per_worker``).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pyarrow as pa

from jobs.prepared import DataInfo
from jobs.rows import SplitRows, kept_rows
from jobs.sources import ResolvedSource
from jobs.spec import DataSpec
from jobs.stats import Partial, merge, partial

DATA_TASK_CPU = 0.25
# An image folder streams as blocks of this many paths, each decoded by one Ray Data task.
IMAGES_PER_BLOCK = 256


def _partitioning(source: ResolvedSource):
    from ray.data.datasource.partitioning import Partitioning

    if source.partition_base is None:
        return None
    return Partitioning("hive", base_dir=source.partition_base)


def read(source: ResolvedSource, spec: DataSpec, columns: list[str]):
    """The source's rows (only ``columns``, and those ``data.filter`` reads), as a lazy
    Ray Dataset. The filter itself is applied by the map functions (``jobs.rows.kept_rows``)."""
    import ray.data

    common = {
        "filesystem": source.filesystem,
        "partitioning": _partitioning(source),
        "num_cpus": DATA_TASK_CPU,
    }
    columns = columns + [t[0] for t in spec.filter or [] if t[0] not in columns]
    if source.format == "parquet":
        ds = ray.data.read_parquet(source.paths, columns=columns, file_extensions=None, **common)
    else:
        ds = ray.data.read_csv(source.paths, file_extensions=None, **common)
        ds = ds.select_columns(columns)
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def datasets_of(data, data_cpus: float, placement_group=None) -> dict:
    """A ``StreamedData``'s datasets (``datasets``)."""
    return datasets(data.source, data.spec, data.info, data_cpus, placement_group)


def datasets(
    source: ResolvedSource,
    spec: DataSpec,
    info: DataInfo,
    data_cpus: float,
    placement_group=None,
) -> dict:
    """``{"train": Dataset, "val": Dataset}`` with ``x`` (float32 tensor) and ``y``.

    ``placement_group``: where Ray Data's tasks run when the reader holds one (a Tune
    trial's: ``within_placement_group``); None leaves them to the cluster's free CPU."""
    from ray.data import ExecutionResources

    columns = [*info.feature_columns, info.label]
    out = {}
    with within_placement_group(placement_group):
        for name, validation in (("train", False), ("val", True)):
            ds = _base(source, spec, columns).map_batches(
                SplitRows(info, spec, validation),
                batch_format="pyarrow",
                batch_size=None,
                num_cpus=DATA_TASK_CPU,
            )
            # The dataset's own context: the cap is this dataset's (the global one stays).
            options = ds.context.execution_options
            options.resource_limits = ExecutionResources(cpu=max(data_cpus, DATA_TASK_CPU))
            _scheduling_in(ds.context, placement_group)
            out[name] = ds
    return out


@contextlib.contextmanager
def within_placement_group(group):
    """While the datasets are built, Ray Data's current context sends their tasks into
    ``group`` (a read takes its scheduling strategy from the current context when it is
    called; ``ray/data/read_api.py``), and Data sizes itself by the group's bundles.

    Why: a Tune trial's placement groups hold the cluster's CPU, so Data's tasks outside
    them waited forever (measured: a 4-trial study on 2 CPUs hung with "Cluster resources
    are not enough to run any task"). ``tuning.study.TrialResources`` gives a streamed
    trial a bundle of CPU for them. Ray 2.60 deprecates ``DataContext.scheduling_strategy``
    ("Ray Data manages scheduling internally") but does not yet place tasks in the
    caller's group itself: ``tests/jobs/test_streaming.py``'s study on a stream fails on
    the release that drops it."""
    if group is None:
        yield
        return
    from ray.data import DataContext

    context = DataContext.get_current()
    before = (context.scheduling_strategy, context.scheduling_strategy_large_args)
    _scheduling_in(context, group)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.scheduling_strategy, context.scheduling_strategy_large_args = before


def _scheduling_in(context, group) -> None:
    """Both of Data's strategies into ``group``: with both a
    ``PlacementGroupSchedulingStrategy`` Data also budgets by the group's bundles."""
    if group is None:
        return
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.scheduling_strategy = strategy
        context.scheduling_strategy_large_args = strategy


def _base(source: ResolvedSource | None, spec: DataSpec, columns: list[str]):
    """The source's rows as a lazy Ray Dataset of Arrow blocks: files (``read``), an image
    folder (``_image_folder``), or a bundled set (streamed on request)."""
    if spec.image_size is not None:
        return _image_folder(spec)
    if source is None:
        import ray.data

        from jobs.bundled import sklearn_table

        return ray.data.from_arrow(sklearn_table(spec.sklearn_set))
    return read(source, spec, columns)


def _image_folder(spec: DataSpec):
    """An image folder streamed: the driver lists paths and classes (no pixels), and Ray
    Data tasks decode and resize blocks of ``IMAGES_PER_BLOCK`` images each, the same way
    the in-memory path does (``jobs.tensors.decode_images``)."""
    from pathlib import Path

    import ray.data

    from jobs.tensors import image_files

    files = image_files(Path(spec.source).expanduser().resolve())
    listing = pa.table({"path": [p for p, _ in files], "class": [c for _, c in files]})
    blocks = [
        listing.slice(start, IMAGES_PER_BLOCK)
        for start in range(0, listing.num_rows, IMAGES_PER_BLOCK)
    ]
    ds = ray.data.from_arrow(blocks).map_batches(
        _decoded,
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=DATA_TASK_CPU,
        fn_args=(list(spec.image_size), spec.image_mode, spec.label),
    )
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def _decoded(listing: pa.Table, size: list[int], mode: str, label: str) -> pa.Table:
    from jobs.tensors import decode_images

    paths, classes = listing.column("path").to_pylist(), listing.column("class").to_pylist()
    return decode_images(paths, classes, size, mode, label)


_PARTIAL_KEYS = ("n", "mean", "m2", "t_n", "t_mean", "t_m2", "n_val", "classes")
# The statistics pass reads a file source in at most this many tasks (files per task grow).
MAX_STATS_TASKS = 256


def _partial_row(table: pa.Table, features, spec: DataSpec, task, input_shape=None) -> dict:
    table = kept_rows(table, spec.filter)
    part = partial(table, features, spec.label, task, spec.seed, spec.validation_split, input_shape)
    return _partial_columns(part, _width(features, input_shape))


def _width(features: list[str], input_shape: list[int] | None) -> int:
    """How many model inputs a row has: its features, or its tensor's elements."""
    return math.prod(input_shape) if input_shape else len(features)


def _partial_columns(part, width: int) -> dict:
    """One partial as one row of columns (what Ray Data carries between tasks)."""
    f, t = part.features, part.target
    zeros = np.zeros(width)
    return {
        "n": np.array([f.n]),
        "mean": np.array([f.mean if f.n else zeros]),
        "m2": np.array([f.m2 if f.n else zeros]),
        "t_n": np.array([t.n]),
        "t_mean": np.array([t.mean[0] if t.n else 0.0]),
        "t_m2": np.array([t.m2[0] if t.n else 0.0]),
        "n_val": np.array([part.n_val]),
        "classes": np.array([json_values(part.classes)], dtype=object),
    }


def json_values(values: list) -> str:
    import json

    return json.dumps(values)


def _file_partials(
    files: pa.Table, source: ResolvedSource, features, spec: DataSpec, task, input_shape=None
):
    """map_batches' function over a block of file paths: each file's partial statistics
    (merged over its units) and the rows each of its units holds per split
    (``jobs.rank_reader``: what lets every rank find its own rows without reading others')."""
    import json

    from jobs.rank_reader import UnitReader
    from jobs.stats import Partial

    reader = UnitReader(source, [*features, spec.label])
    width = _width(features, input_shape)
    out: dict[str, list] = {k: [] for k in (*_PARTIAL_KEYS, "units")}
    for path in files.column("path").to_pylist():
        whole, units = Partial.empty(), []
        for group in reader.row_groups(path):
            unit = Partial.empty()
            for table in reader.tables(path, group):
                table = kept_rows(table, spec.filter)
                unit = unit.merge(
                    partial(
                        table, features, spec.label, task, spec.seed, spec.validation_split,
                        input_shape,
                    )
                )  # fmt: skip
            units.append([path, group, unit.features.n, unit.n_val])
            whole = whole.merge(unit)
        for key, value in _partial_columns(whole, width).items():
            out[key].append(value[0])
        out["units"].append(json.dumps(units))
    return {
        k: np.array(v, dtype=object) if k in ("classes", "units") else np.array(v)
        for k, v in out.items()
    }


def scan_statistics(
    source: ResolvedSource,
    spec: DataSpec,
    features: list[str],
    task: str,
    input_shape: list[int] | None = None,
):
    """One pass of Ray Data tasks over the source; the merged ``SourceStats`` (per element
    of a tensor feature: ``jobs.data`` pools images per channel). A file source is read
    one task per file, which also counts the rows of each unit (``SourceStats.units``)."""
    import json

    import ray.data

    from jobs.stats import Moments

    if source is not None and spec.image_size is None:
        listing = ray.data.from_items(
            [{"path": path} for path in source.paths],
            override_num_blocks=min(len(source.paths), MAX_STATS_TASKS),
        )
        listing.context.enable_progress_bars = False
        listing.context.print_on_execution_start = False
        ds = listing.map_batches(
            _file_partials,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=DATA_TASK_CPU,
            fn_args=(source, features, spec, task, input_shape),
        )
    else:
        ds = _base(source, spec, [*features, spec.label]).map_batches(
            _partial_row,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=DATA_TASK_CPU,
            fn_args=(features, spec, task, input_shape),
        )
    units: list = []

    def partials():
        for batch in ds.iter_batches(batch_format="numpy", batch_size=256):
            for i in range(len(batch["n"])):
                n, t_n = int(batch["n"][i]), int(batch["t_n"][i])
                yield Partial(
                    Moments(n, batch["mean"][i], batch["m2"][i]) if n else Moments(),
                    Moments(t_n, batch["t_mean"][i : i + 1], batch["t_m2"][i : i + 1])
                    if t_n
                    else Moments(),
                    int(batch["n_val"][i]),
                    json.loads(batch["classes"][i]),
                )
                if "units" in batch:
                    units.extend(json.loads(batch["units"][i]))

    stats = merge(partials(), task)
    stats.units = sorted(units, key=lambda unit: (unit[0], unit[1] or 0))
    return stats


def data_cpu_share(train, data) -> float:
    """CPU of each training worker's share left to its data pipeline (0 in memory).

    ``data.cpus_per_worker``, and together at least one whole CPU: Ray Data 2.60 lists a
    read's files in a task of one whole CPU (``plan_list_files_op.py``), whatever its read
    tasks ask (measured: two actors of 0.55 CPU on 2 CPUs starve a 0.25-CPU read; of 0.5
    CPU they do not). At most half of each worker's CPU.
    """
    from jobs.rank_reader import reads_by_rank

    if getattr(data.info, "reading", "in-memory") != "streamed" or reads_by_rank(data):
        return 0.0  # in memory, or files each rank reads in its own process
    cpu = train.resources_per_worker.get("CPU", 1.0)
    return min(max(data.spec.cpus_per_worker, 1 / train.workers), cpu / 2)


def worker_resources(train, data) -> dict[str, float]:
    """What each training worker (or local-runner actor) asks of Ray: its
    ``resources_per_worker`` less the CPU its data pipeline takes (``data_cpu_share``)."""
    resources = dict(train.resources_per_worker)
    share = data_cpu_share(train, data)
    if share:
        resources["CPU"] = resources.get("CPU", 1.0) - share
    return resources


def rank_shards_config(dp_size: int, data_cpus: float):
    """A Ray Train ``DataConfig`` that splits each dataset into ``dp_size`` equal shards,
    one per data-parallel rank: ranks ``0..dp_size-1`` (the first pipeline stage in
    DeepSpeed's pipe-major topology) get them; later stages get None and receive their
    replica's batches from its first stage (``jobs.splits.BroadcastSplit``)."""
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig

    class RankShards(DataConfig):
        def __init__(self):
            super().__init__(datasets_to_split="all")
            self.options = ExecutionOptions(
                resource_limits=ExecutionResources(cpu=max(data_cpus, DATA_TASK_CPU))
            )

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            hints = list(worker_node_ids[:dp_size]) if worker_node_ids else None
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self.options
                shards = ds.streaming_split(dp_size, equal=True, locality_hints=hints)
                for rank in range(world_size):
                    output[rank][name] = shards[rank] if rank < dp_size else None
            return output

    return RankShards()
