"""The training loop: a DeepSpeed engine over the zoo's layer list, under either runner.

``train_loop`` runs on every Ray Train worker (``train_loop_per_worker``) and, for a
single-worker run or trial, in the calling process (``jobs.local``); it sees its runner
only through ``jobs.runtime.TrainingRuntime``.

Layout: ``workers = pipeline_stages x data_parallel``. In memory, every worker holds the
whole training split, takes the same seeded global batches and keeps its data-parallel
slice of each; streamed, each data-parallel rank reads its own shard (``jobs.splits``) and
the later stages of a pipeline replica get the first stage's batches. Pipeline stages of
one replica thus see identical batches, and the optimisation is the same whatever the
layout: ZeRO-3 or a 2-stage pipeline follows the loss curve of plain data parallelism
(tests/jobs/test_parallel_equivalence.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jobs.errors import TrainingError
from jobs.events import Diverged, EpochEnded, TrainingWarning, WorkerStarted
from jobs.loop_config import DATA_INFO_FILE, MODEL_FILE, STATE_FILE, LoopConfig
from jobs.models import MODEL_ZOO, DataShape, ZooEntry, build_layers, build_network, get_entry
from jobs.plugins import importable
from jobs.prepared import DataInfo
from jobs.profiling import StepProfiler
from jobs.runtime import TrainingRuntime
from jobs.schedule import build_optimizer, build_scheduler
from jobs.spec import TrainSpec
from jobs.stock import stock_deepspeed

VAL_CHUNK = 1024  # validation rows per data-parallel rank per step


def select_accelerator() -> None:
    """Point DeepSpeed at CUDA when there is a GPU and at the CPU otherwise (before import)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def import_deepspeed():
    """``deepspeed``, imported without its autotuner's optional ``import mlflow``.

    That import is 2.3 s of deepspeed's 2.9 s import (``python -X importtime``), paid by
    every training worker at every start; workers never log to MLflow themselves (the
    driver does), and DeepSpeed's autotuner, the only user, is not used here.
    """
    import sys

    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # makes `import mlflow` raise ImportError, which it catches
    try:
        import deepspeed
    finally:
        del sys.modules["mlflow"]
    return deepspeed


def skip_shared_memory_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-building its shared-memory all-reduce op.

    On the CPU accelerator ``deepspeed.init_distributed`` builds ``deepspeed_shm_comm``
    with ninja; inside Ray workers that build ran again on nearly every run (55-75 s of
    both cores per training start, measured). The op serves only inference all-reduce
    (tensor-parallel inference); training's collectives go through torch.distributed (gloo)
    either way, so marking it incompatible changes no result.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


# DeepSpeed imports its Muon optimizer modules from ZeRO's and bf16's code paths (its own
# optimizer check in deepspeed.initialize, gradient averaging, step) only to ask whether
# the optimizer is Muon; importing them compiles Muon's kernels with torch.compile, i.e.
# imports torch._dynamo: 1.7 s of a 1.73 s deepspeed.initialize on one process, 4.4 s
# with two workers starting at once. The optimizers here are adam, adamw and sgd, never
# Muon, so stand-ins answer instead. tests/jobs/test_startup.py fails if an upgrade moves
# these modules or names (the import cost would come back) and builds ZeRO-1/2/3 engines.
MUON_MODULES = {
    "deepspeed.runtime.zero.muon.muon_optimizer": "MuonWithAuxAdam",
    "deepspeed.runtime.zero.muon.original_muon": "muon_update",
}


class _NotMuon:
    """Stands for DeepSpeed's MuonWithAuxAdam: no optimizer here is one."""


def _no_muon_update(*args, **kwargs):
    raise RuntimeError("orch configures adam, adamw or sgd; DeepSpeed's Muon is not loaded")


def skip_muon_kernels() -> None:
    """Answer DeepSpeed's Muon imports with stand-ins (unless the real ones are loaded)."""
    import sys
    import types

    stand_ins = {"MuonWithAuxAdam": _NotMuon, "muon_update": _no_muon_update}
    for module_name, attribute in MUON_MODULES.items():
        if module_name not in sys.modules:
            module = types.ModuleType(module_name, "orch's stand-in: Muon is not used")
            setattr(module, attribute, stand_ins[attribute])
            sys.modules[module_name] = module


def slow_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A warning when bf16 runs on a CPU without native bf16 (it can be 10-100x slower)."""
    if precision != "bf16" or device.type != "cpu":
        return None
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return (
        "precision bf16 on a CPU without AVX512-BF16/AMX: matrix products are emulated and "
        "can be many times slower than fp32; consider train.deepspeed.precision: fp32"
    )


def loss_fn(task: str, row_losses=None):
    """The training loss: a plugin's per-row ``row_losses`` averaged, or the task's."""
    if row_losses is not None:
        return lambda out, y: row_losses(out.float(), y).mean()
    if task == "classification":
        return lambda out, y: F.cross_entropy(out.float(), y)
    return lambda out, y: F.mse_loss(out.float().squeeze(-1), y.float())


# ZeRO 1-3 over gloo (CPU workers). DeepSpeed's defaults suit GPUs: contiguous gradients
# copy every gradient into a preallocated buffer as backward makes it (against allocator
# fragmentation on a GPU; on a CPU a copy per gradient, 8 ms of a 68 ms ZeRO-2 step of
# the bench's MLP), and reduce-scatter, which gloo runs as slower pieces. Measured with
# train.profile on the bench's MLP, 2 workers: ZeRO-2 5,600 -> 6,550 samples/s, ZeRO-3
# 4,900 -> 5,200 (torchrun DDP: 8,100). The math is the same (an all-reduce averages the
# same gradients; tests/jobs/test_parallel_equivalence.py).
CPU_ZERO_OPTIONS = {"contiguous_gradients": False, "reduce_scatter": False}


def deepspeed_config(train: TrainSpec, device_type: str = "cpu") -> dict:
    """DeepSpeed's config for ``train`` on workers of ``device_type`` (cpu | cuda)."""
    ds = train.deepspeed
    config: dict = {
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": {"stage": ds.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # always stated: DeepSpeed's own default is 1.0, which clipped every run whose spec
        # said 0 (off) and cost each step a gradient norm and its all-reduce (a sync point)
        "gradient_clipping": ds.gradient_clipping,
    }
    if device_type == "cpu" and ds.zero_stage > 0 and not stock_deepspeed():
        config["zero_optimization"].update(CPU_ZERO_OPTIONS)
    if ds.precision == "bf16" and autocast_dtype(train) is None:
        config["bf16"] = {"enabled": True}
    elif ds.precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 12}
    return config


@dataclass
class Layout:
    """Where this worker sits: its data-parallel rank and pipeline stage."""

    dp_rank: int
    dp_size: int
    stage: int
    stages: int

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.stages - 1


class _Sums:
    """Sums of loss, correct predictions, squared errors, samples and each plugin metric's
    row values, reduced over ranks."""

    def __init__(self, device, n_plugin_metrics: int = 0):
        self.values = torch.zeros(4 + n_plugin_metrics, dtype=torch.float64, device=device)

    def add(self, sums: list[float]) -> None:
        self.values += torch.tensor(sums, dtype=torch.float64, device=self.values.device)

    def reduce(self) -> list[float]:
        torch.distributed.all_reduce(self.values)
        return self.values.tolist()


def _weighted_stats(out, y, weight, task: str, target_std: float, plugin=None) -> list[float]:
    """Per-batch sums for metrics; padded rows carry weight 0. ``plugin``: a plugin's own
    loss (which val_loss then is) and metrics, as ``_Engine`` holds them."""
    out = out.float()
    if task == "classification":
        losses = F.cross_entropy(out, y, reduction="none")
        correct = ((out.argmax(-1) == y).double() * weight).sum().item()
        sq = 0.0
    else:
        pred = out.squeeze(-1)
        losses = (pred - y.float()) ** 2
        correct = 0.0
        sq = (losses.double() * weight).sum().item() * target_std**2
    row_losses = plugin.loss if plugin is not None else None
    if row_losses is not None:
        losses = row_losses(out, y)
    sums = [(losses.double() * weight).sum().item(), correct, sq, weight.sum().item()]
    for metric in plugin.metrics.values() if plugin is not None else ():
        sums.append((_row_values(metric.rows(out, y), len(out)) * weight).sum().item())
    return sums


def _row_values(values, rows: int):
    """A plugin metric's per-row values as float64, or a TrainingError saying what came."""
    values = torch.as_tensor(values).double().reshape(-1)
    if values.numel() != rows:
        raise TrainingError(
            f"a plugin metric returned {values.numel()} values for {rows} rows; return one "
            "value per row (no reduction)"
        )
    return values


def _rank_slice(x, y, layout: Layout, pad: bool):
    """This rank's contiguous share of a global batch; padded to one row if empty."""
    per_rank = -(-len(x) // layout.dp_size)
    lo = min(layout.dp_rank * per_rank, len(x))
    hi = min(lo + per_rank, len(x))
    xs, ys = x[lo:hi], y[lo:hi]
    weight = torch.ones(len(xs), dtype=torch.float64)
    if pad and len(xs) < per_rank:
        fill = per_rank - len(xs)
        xs = torch.cat([xs, x[:1].expand(fill, *x.shape[1:])])
        ys = torch.cat([ys, y[:1].expand(fill)])
        weight = torch.cat([weight, torch.zeros(fill, dtype=torch.float64)])
    return xs, ys, weight


@dataclass
class _Engine:
    """A built DeepSpeed engine and what the loop needs to drive it."""

    engine: object
    layout: Layout
    criterion: object
    dtype: torch.dtype  # of the inputs
    plugin: ZooEntry | None = None  # its own loss (val_loss) and metrics (val_<name>)
    reducer: torch.nn.Module | None = None  # see _overlapping_reducer
    autocast: torch.dtype | None = None  # see autocast_dtype
    device_type: str = "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward: through the reducer when there is one (it arms its hooks)."""
        with self._compute():
            return self.engine(x) if self.reducer is None else self.reducer(x)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """A validation forward (no gradients, no reducer), in the training's precision."""
        with self._compute():
            return self.engine(x)

    def _compute(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast)

    def accumulating(self, local: bool):
        """Around a micro-batch's forward and backward: ``local`` = no all-reduce yet (a
        micro-batch before the accumulation boundary)."""
        if local and self.reducer is not None:
            return self.reducer.no_sync()
        return contextlib.nullcontext()


def autocast_dtype(train: TrainSpec) -> torch.dtype | None:
    """bf16 on plain data parallelism (ZeRO-0, no pipeline) is autocast: fp32 weights,
    gradients and optimizer, with matmuls and convolutions in bf16; None otherwise.

    Why: DeepSpeed's bf16 at ZeRO-0 keeps bf16 weights and wraps the optimizer to keep fp32
    masters: each step converts every gradient and weight and checks them for overflow
    (the profiler: a 10-12 ms optimizer step against 4 ms in fp32, on the bench's MLP), so
    bf16 trained only 1.36x faster than fp32 where its matmuls are 3x. Autocast puts bf16
    where the time is (the matmuls), and the all-reduce then overlaps backward like fp32's
    (``_overlapping_reducer``). ZeRO 1-3 keep DeepSpeed's bf16: its partitioned optimizer
    already holds the fp32 masters, and their gradients travel in bf16 (half the bytes).
    """
    ds = train.deepspeed
    if stock_deepspeed():
        return None
    if ds.precision == "bf16" and ds.zero_stage == 0 and ds.pipeline_stages == 1:
        return torch.bfloat16
    return None


def _overlapping_reducer(engine, train: TrainSpec, world_size: int, own_model: bool = False):
    """Plain data parallelism (ZeRO-0, an fp32 engine, no pipeline) all-reduces gradients
    with torch DDP's reducer instead of DeepSpeed's.

    Why: DeepSpeed's ZeRO-0 reduces only after the whole backward has run (flatten every
    gradient, all-reduce, scale, copy back), so the step waits for all of it; DDP's reducer
    starts each bucket's all-reduce as soon as its gradients are ready, while the rest of
    backward runs (the profiler showed 9-14 ms of a 41-47 ms step waiting on the all-reduce
    of the bench's MLP). The engine keeps the rest: optimizer, scheduler, clipping,
    checkpoints. Both average over the data-parallel ranks, so the math is the same
    (tests/jobs/test_parallel_equivalence.py). ``enable_backward_allreduce`` is the
    engine's own switch for a caller that reduces gradients itself.
    """
    ds = train.deepspeed
    fp32_engine = ds.precision == "fp32" or autocast_dtype(train) is not None
    if world_size < 2 or ds.zero_stage != 0 or not fp32_engine or ds.pipeline_stages > 1:
        return None
    if stock_deepspeed():
        return None
    from torch.nn.parallel import DistributedDataParallel

    if not hasattr(engine, "enable_backward_allreduce"):
        raise TrainingError(
            "this DeepSpeed has no engine.enable_backward_allreduce: ZeRO-0 cannot hand its "
            "all-reduce to torch DDP; install the deepspeed version pyproject.toml pins"
        )
    engine.enable_backward_allreduce = False
    return DistributedDataParallel(
        engine.module,
        broadcast_buffers=False,
        gradient_as_bucket_view=True,
        # a user's module may have parameters a forward does not use (DeepSpeed's own
        # all-reduce took them): DDP then has to look for them, at some cost per step
        find_unused_parameters=own_model,
    )


def _build_engine(runtime: TrainingRuntime, job: LoopConfig, deepspeed) -> _Engine:
    train, info = job.train, job.info
    stages = train.deepspeed.pipeline_stages
    # The same initial weights (and dropout draws) on every rank, every layout, every
    # runner, and in an actor that ran another trial before.
    random.seed(job.seed)
    np.random.seed(job.seed % 2**32)
    torch.manual_seed(job.seed)
    importable(job.import_root)  # an import-path model: the user's module, as the driver has it
    shape = DataShape.of(info)
    entry = get_entry(job.model.type)
    criterion = loss_fn(info.task, entry.loss)  # a plugin's own loss, or None: the task's
    if stages > 1:
        from deepspeed.pipe import PipelineModule

        module = PipelineModule(
            layers=build_layers(job.model.type, job.model.params, shape),
            loss_fn=criterion,
            num_stages=stages,
            partition_method="parameters",
            dynamic_shape=True,  # validation batches vary in size
        )
    else:
        module = build_network(job.model.type, job.model.params, shape)
    steps_per_epoch = train.steps_per_epoch or max(1, info.n_train // train.batch_size)
    optimizer = build_optimizer(train.optimizer, module.parameters())
    scheduler = build_scheduler(train.scheduler, optimizer, steps_per_epoch, train.epochs)
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train, runtime.device.type),
    )
    if stages > 1:
        layout = Layout(
            engine.grid.get_data_parallel_rank(),
            engine.grid.get_data_parallel_world_size(),
            engine.stage_id,
            stages,
        )
    else:
        layout = Layout(runtime.rank, runtime.world_size, 0, 1)
    autocast = autocast_dtype(train)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        train.deepspeed.precision, torch.float32
    )
    plugin = entry if entry.loss is not None or entry.metrics else None
    own_model = job.model.type not in MODEL_ZOO  # a plugin's: it may leave parameters unused
    reducer = _overlapping_reducer(engine, train, runtime.world_size, own_model)
    return _Engine(
        engine,
        layout,
        criterion,
        torch.float32 if autocast else dtype,
        plugin,
        reducer,
        autocast,
        runtime.device.type,
    )


@dataclass(frozen=True)
class _Resumed:
    """The checkpoint a worker resumed from: its epoch and that epoch's metrics."""

    epoch: int
    metrics: dict | None


def _resume(runtime: TrainingRuntime, built: _Engine) -> _Resumed | None:
    """Load the runtime's latest checkpoint into the engine; None for a fresh start."""
    with runtime.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is None:
            return None
        load_path, client_state = built.engine.load_checkpoint(str(ckpt_dir))
        if load_path is None:
            raise TrainingError(
                f"checkpoint {ckpt_dir} has no loadable DeepSpeed state; refusing to "
                "restart from scratch silently"
            )
        state_file = Path(ckpt_dir) / STATE_FILE  # rank 0 writes it
        metrics = json.loads(state_file.read_text())["metrics"] if state_file.exists() else None
    return _Resumed(int(client_state["epoch"]), metrics)


def train_loop(runtime: TrainingRuntime, job: LoopConfig) -> None:
    """Train ``job`` under ``runtime``, reporting every epoch; the same for both runners."""
    select_accelerator()
    deepspeed = import_deepspeed()
    device = runtime.device
    if device.type == "cpu":
        skip_shared_memory_comm_op()
    skip_muon_kernels()
    runtime.init_process_group()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    built = _build_engine(runtime, job, deepspeed)
    profiler = StepProfiler(job.train.profile, runtime.rank, device)
    try:
        _feed_pipeline_stages(runtime, built, job.info)
        resumed = _resume(runtime, built)
        resumed_from = resumed.epoch if resumed else None
        start_epoch = (resumed_from or 0) + 1
        warning = slow_bf16_warning(job.train.deepspeed.precision, device)
        if warning and runtime.rank == 0:
            runtime.emit(TrainingWarning(warning))
        runtime.emit(
            WorkerStarted(
                rank=runtime.rank,
                runner=runtime.runner,
                node_id=runtime.node_id,
                pid=os.getpid(),
                start_epoch=start_epoch,
                epochs=job.train.epochs,
                resumed_from_epoch=resumed_from,
            )
        )
        if resumed and resumed.metrics and runtime.rank == 0:
            runtime.emit(EpochEnded(metrics=resumed.metrics, checkpointed=True, replayed=True))
        for epoch in range(start_epoch, job.train.epochs + 1):
            metrics = _train_epoch(runtime, job, built, epoch, profiler)
            if metrics is None:
                return  # diverged (every rank sees the same reduced loss and stops here)
            metrics.update(_validate(runtime, built, job.info))
            due = epoch == job.train.epochs or epoch % job.train.checkpoint.every_epochs == 0
            _report(runtime, job, built, epoch, metrics, due, profiler)
            if runtime.rank == 0:
                runtime.emit(EpochEnded(metrics=metrics, checkpointed=due))
    finally:
        profiler.close()
        built.engine.destroy()  # a reused Tune actor must not keep this trial's engine


def _feed_pipeline_stages(runtime: TrainingRuntime, built: _Engine, info: DataInfo) -> None:
    """Streamed shards in a pipeline: the first stage of each replica reads, the others
    receive its batches (``jobs.splits.BroadcastSplit``)."""
    from jobs.splits import BroadcastSplit

    layout = built.layout
    if layout.stages == 1 or not getattr(runtime.train_split, "per_rank", True):
        return
    grid = built.engine.grid
    if (layout.stage, layout.dp_rank) != (
        runtime.rank // layout.dp_size,
        runtime.rank % layout.dp_size,
    ):
        raise TrainingError(
            f"rank {runtime.rank} is stage {layout.stage}, replica {layout.dp_rank} in "
            "DeepSpeed's topology, not where its data shard was given; cannot stream"
        )
    src = grid.stage_to_global(0)
    y_dtype = torch.int64 if info.task == "classification" else torch.float32
    for name in ("train_split", "val_split"):
        mine = getattr(runtime, name) if layout.stage == 0 else None
        split = BroadcastSplit(
            mine, grid.get_pipe_parallel_group(), src, info.n_features, y_dtype, runtime.device
        )
        setattr(runtime, name, split)


def _train_epoch(
    runtime: TrainingRuntime, job: LoopConfig, built: _Engine, epoch: int, profiler: StepProfiler
) -> dict | None:
    """One pass over the training split; its metrics, or None if the loss diverged.

    The phases of a step are marked for ``train.profile`` (no-ops when it is off)."""
    train, device, engine, layout = job.train, runtime.device, built.engine, built.layout
    micro = train.micro_batch_size
    gas = train.deepspeed.gradient_accumulation_steps
    engine.train()
    sums = _Sums(device)
    started = time.perf_counter()
    split = runtime.train_split
    batch_size = train.batch_size // layout.dp_size if split.per_rank else train.batch_size
    batches = split.epoch_batches(batch_size, job.seed + epoch, train.steps_per_epoch)
    steps, data_wait, seen, taken = 0, 0.0, 0, 0
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    batches = iter(batches)
    while True:
        waiting = time.perf_counter()
        with profiler.phase("data_wait"):
            batch = next(batches, None)
            if batch is not None:
                if split.per_rank:  # this rank's own rows already
                    xs, ys = batch.x, batch.y
                else:
                    xs, ys, _ = _rank_slice(batch.x, batch.y, layout, pad=False)
                xs = xs.to(device=device, dtype=built.dtype)
                ys = ys.to(device)
                micro_batches = [
                    (xs[i * micro : (i + 1) * micro], ys[i * micro : (i + 1) * micro])
                    for i in range(gas)
                ]
        if batch is None:
            break
        data_wait += time.perf_counter() - waiting
        taken += len(xs)
        if layout.stages > 1:  # never profiled (the spec refuses it)
            loss = engine.train_batch(data_iter=iter(micro_batches))
            if layout.is_last_stage:
                loss_total += loss.detach().double() * len(xs)
                seen += len(xs)
        else:
            loss_total += _data_parallel_step(built, micro_batches, profiler)
            seen += len(xs)
        steps += 1
        profiler.step_done()
    profiler.epoch_done()
    train_time = time.perf_counter() - started
    sums.add([loss_total.item(), 0, 0, seen])
    loss_sum, _, _, count = sums.reduce()
    if not math.isfinite(loss_sum):
        # Returning (not raising) keeps Ray Train from retrying a failure that would
        # repeat; the driver raises the Diverged event's message.
        if runtime.rank == 0:
            runtime.emit(
                Diverged(
                    message=f"training diverged at epoch {epoch}: train_loss is "
                    f"{loss_sum / max(count, 1)}; lower train.optimizer.lr or set "
                    "train.deepspeed.gradient_clipping",
                    epoch=epoch,
                )
            )
        return None
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(count, 1),
        "samples_per_s": steps * train.batch_size / train_time,
        # rank 0's share of the epoch spent waiting for input: near 1 = input-bound
        "data_wait_fraction": data_wait / train_time,
        # training rows rank 0 took this epoch (its shard's, streamed; its slices in memory),
        # whichever pipeline stage it is (``seen`` counts the rows of the loss: last stages)
        "rank_rows": float(taken),
        "lr": engine.get_lr()[0] if engine.get_lr() else train.optimizer.lr,
    }


def _data_parallel_step(built: _Engine, micro_batches: list, profiler: StepProfiler):
    """One optimizer step over its micro-batches (no pipeline), its phases marked for
    ``train.profile``; the loss summed over the rows, as a tensor (no per-step sync)."""
    total = torch.zeros((), dtype=torch.float64, device=micro_batches[0][0].device)
    for i, (xm, ym) in enumerate(micro_batches):
        with built.accumulating(local=i < len(micro_batches) - 1):
            with profiler.phase("forward"):
                loss = built.criterion(built.forward(xm), ym)
                total += loss.detach().double() * len(xm)
            with profiler.phase("backward"):
                built.engine.backward(loss)
        with profiler.phase("optimizer_step"):
            built.engine.step()  # applies the update at the last micro-batch
    return total


def _report(
    runtime: TrainingRuntime,
    job: LoopConfig,
    built: _Engine,
    epoch: int,
    metrics: dict,
    due: bool,
    profiler: StepProfiler,
) -> None:
    """Hand the epoch to the runtime, with a checkpoint when one is due.

    The final checkpoint also holds the consolidated fp32 model and the DataInfo: what
    export, registration and serving load, whichever runner wrote it; and, once a
    profile is done, every checkpoint holds it (``profile/``).
    """
    if not due:
        runtime.report(metrics, None, final=False)
        return
    final = epoch == job.train.epochs
    with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
        built.engine.save_checkpoint(tmp, tag=f"epoch-{epoch}", client_state={"epoch": epoch})
        if final:
            state = _full_state_dict(built.engine, job.train, built.layout)
            if runtime.rank == 0:
                torch.save(state, Path(tmp) / MODEL_FILE)
                (Path(tmp) / DATA_INFO_FILE).write_text(job.info.model_dump_json())
        if runtime.rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
        profiler.save_into(Path(tmp))
        runtime.report(metrics, Path(tmp), final=final)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point.

    ``config``: ``job`` (LoopConfig), ``data`` (an object-store ref to the PreparedData for
    small splits or to the StreamedData of files each rank reads; None when Ray Data
    streams them), ``events`` (the driver's EventHub),
    ``run_key``, ``resume_from`` (a checkpoint directory to start from when Ray Train has
    none of its own, e.g. one the local runner wrote).
    """
    import ray
    import ray.train

    from jobs.prepared import PreparedData
    from jobs.rank_reader import rank_splits
    from jobs.runtime import RayTrainRuntime
    from jobs.splits import InMemorySplit

    job: LoopConfig = config["job"]
    splits = None
    if config["data"] is not None:
        data = ray.get(config["data"])
        if isinstance(data, PreparedData):
            splits = {
                "train": InMemorySplit(data.x_train, data.y_train),
                "val": InMemorySplit(data.x_val, data.y_val),
            }
        else:
            rank = ray.train.get_context().get_world_rank()
            splits = rank_splits(data, rank, job.train.data_parallel_degree)
    runtime = RayTrainRuntime(
        splits, job.info, config["events"], config["run_key"], config["resume_from"]
    )  # splits None: this rank's shards of the streamed datasets
    train_loop(runtime, job)


def _validate(runtime: TrainingRuntime, built: _Engine, info: DataInfo) -> dict:
    engine, layout, device = built.engine, built.layout, runtime.device
    engine.eval()
    plugin_metrics = built.plugin.metrics if built.plugin is not None else {}
    sums = _Sums(device, len(plugin_metrics))
    split = runtime.val_split
    chunk = VAL_CHUNK if split.per_rank else VAL_CHUNK * layout.dp_size
    with torch.no_grad():
        for batch in split.in_order(chunk):
            if split.per_rank:  # equal shards: every rank runs as many forward passes
                xs, ys = batch.x, batch.y
                weight = torch.ones(len(xs), dtype=torch.float64)
            else:
                xs, ys, weight = _rank_slice(batch.x, batch.y, layout, pad=True)
            xs, ys = xs.to(device=device, dtype=built.dtype), ys.to(device)
            if layout.stages > 1:
                # DeepSpeed 0.19 adds eval outputs to the last train_batch's loss total
                # unless it is cleared (it only resets it in train_batch).
                engine.total_loss = None
                _, out = engine.eval_batch(
                    iter([(xs, ys)]),
                    return_logits=True,
                    compute_loss=False,
                    bcast_loss=False,
                    reduce_output=None,
                    num_micro_batches=1,
                )
                if not layout.is_last_stage:
                    continue
            else:
                out = built.evaluate(xs)
            stats = _weighted_stats(
                out, ys, weight.to(device), info.task, info.target_std, built.plugin
            )
            sums.add(stats)
    loss_sum, correct, sq_err, count, *plugin_sums = sums.reduce()
    # Ranks' slices are disjoint; in a pipeline only the last stage adds, once per replica.
    metrics = {"val_loss": loss_sum / count}
    if info.task == "classification":
        metrics["val_accuracy"] = correct / count
    else:
        metrics["val_rmse"] = (sq_err / count) ** 0.5
    for name, total in zip(plugin_metrics, plugin_sums, strict=True):
        metrics[f"val_{name}"] = total / count
    return metrics


def _full_state_dict(engine, train: TrainSpec, layout: Layout) -> dict:
    """The whole model's fp32 weights on rank 0, from ZeRO-3 partitions or pipeline stages.

    Every rank must call this (it gathers). Other ranks get an empty dict.
    """
    import deepspeed

    module = engine.module
    if train.deepspeed.zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            local = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    else:
        local = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    if layout.stages == 1:
        return local if torch.distributed.get_rank() == 0 else {}
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local if layout.dp_rank == 0 else {})
    if torch.distributed.get_rank() != 0:
        return {}
    merged: dict = {}
    for part in gathered:
        merged.update(part)
    return merged
