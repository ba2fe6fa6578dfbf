"""The local runner: a single-worker training runs in the calling process, no Ray Train.

Ray Train starts a controller, a placement group, a sync actor, a worker and a cleaner for
every ``fit()``: 25-35 s here, to train a small model for a few seconds. A single-worker
run needs none of it. The loop (``jobs.worker.train_loop``) runs in the process that asks:
a Ray Tune trial actor, or one Ray task holding the spec's ``resources_per_worker`` for a
single-worker ``orch run``. The DeepSpeed engine is the same (a 1-rank process group:
gloo on CPU, nccl on CUDA), and so are the metrics and the checkpoints: a checkpoint
written by one runner resumes on the other.

Checkpoints of an ``orch run`` go where Ray Train puts its own, ``<storage>/<run>/
checkpoint_<time>/``, moved into place atomically; inside a Tune trial they go through
Tune's checkpoint API, and the final one (the consolidated model) to the trial's run
directory under the study's trials storage, as the Ray Train runner's does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from jobs.events import Runner, TrainingEvent
from jobs.prepared import StreamedData, TrainingData
from jobs.rank_reader import rank_splits, reads_by_rank
from jobs.runtime import TrainingRuntime
from jobs.splits import DataIteratorBlocks, InMemorySplit, ShardSplit
from jobs.worker import STATE_FILE, LoopConfig, train_loop

CHECKPOINT_PREFIX = "checkpoint_"
# Written into the checkpoints this runner moves into a run directory: the only ones it
# prunes (Ray Train prunes its own, and lists them in its own state).
LOCAL_MARKER = ".orch_local_runner"


def single_process_group(device: torch.device) -> None:
    """A 1-rank torch.distributed group for DeepSpeed, made once per process.

    DeepSpeed looks for an MPI launcher when RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    and LOCAL_RANK are unset; they name this process as the only rank. The group's store is
    in memory (no port opened). A reused Tune actor keeps the group for its next trial.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "0",
    }.items():
        os.environ.setdefault(name, value)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=dist.HashStore(),
        rank=0,
        world_size=1,
    )


def _device() -> torch.device:
    """The GPU Ray gave this process (it sets CUDA_VISIBLE_DEVICES to it), else the CPU."""
    import ray

    if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def checkpoint_epoch(directory: Path) -> int | None:
    """The epoch a checkpoint directory holds, or None if it is not a complete one of ours."""
    try:
        return int(json.loads((directory / STATE_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint_in(run_dir: Path) -> Path | None:
    """The run's checkpoint of the highest epoch, written by either runner."""
    found = [
        (epoch, path)
        for path in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.is_dir() and (epoch := checkpoint_epoch(path)) is not None
    ]
    return max(found)[1] if found else None


class RunDirCheckpoints:
    """Checkpoints in ``<storage>/<run>/checkpoint_<time>/``, as Ray Train lays them out."""

    def __init__(self, run_dir: Path, keep: int):
        self.run_dir = run_dir
        self.keep = keep

    def persist(self, source: Path) -> Path:
        """Copy a finished checkpoint in, atomically; drop this runner's older ones."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        name = (
            CHECKPOINT_PREFIX
            + time.strftime("%Y-%m-%d_%H-%M-%S")
            + f".{time.time_ns() % 10**9:09d}"
        )
        staging = self.run_dir / f".tmp-{name}"
        shutil.copytree(source, staging)
        (staging / LOCAL_MARKER).touch()
        final = self.run_dir / name
        os.replace(staging, final)
        self._prune()
        return final

    def _prune(self) -> None:
        ours = sorted(
            (epoch, path)
            for path in self.run_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if (path / LOCAL_MARKER).exists() and (epoch := checkpoint_epoch(path)) is not None
        )
        for _, path in ours[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)


class LocalRuntime(TrainingRuntime):
    """Rank 0 of 1, in this process. Where checkpoints go depends on who runs it."""

    runner: Runner = "local"

    def __init__(self, data: TrainingData, on_event: Callable[[TrainingEvent], None]):
        import ray

        self.rank, self.world_size = 0, 1
        self.device = _device()
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        if isinstance(data, StreamedData) and reads_by_rank(data):  # the one rank reads
            splits = rank_splits(data, 0, 1)
            self.train_split, self.val_split = splits["train"], splits["val"]
        elif isinstance(data, StreamedData):  # Ray Data streams it to this process
            from jobs.streaming import datasets_of

            # In a Tune trial, Data's tasks run in the trial's own group (its CPU bundle).
            group = ray.util.get_current_placement_group() if ray.is_initialized() else None
            datasets = datasets_of(data, data.spec.cpus_per_worker, group)
            self.train_split = ShardSplit(DataIteratorBlocks(datasets["train"].iterator()))
            self.val_split = ShardSplit(DataIteratorBlocks(datasets["val"].iterator()))
        else:
            self.train_split = InMemorySplit(data.x_train, data.y_train)
            self.val_split = InMemorySplit(data.x_val, data.y_val)
        self._on_event = on_event

    def init_process_group(self) -> None:
        single_process_group(self.device)

    def emit(self, event: TrainingEvent) -> None:
        self._on_event(event)


class StandaloneRuntime(LocalRuntime):
    """An ``orch run``: checkpoints into the run directory, resume from its latest."""

    def __init__(self, data: TrainingData, on_event, checkpoints: RunDirCheckpoints):
        super().__init__(data, on_event)
        self.checkpoints = checkpoints
        self.last_checkpoint: Path | None = None

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        yield latest_checkpoint_in(self.checkpoints.run_dir)

    def report(self, metrics: dict, checkpoint_dir: Path | None, final: bool) -> None:
        if checkpoint_dir is not None:
            self.last_checkpoint = self.checkpoints.persist(checkpoint_dir)


class TrialRuntime(LocalRuntime):
    """Inside a Ray Tune trial: epochs go to Tune (its schedulers decide after each one).

    Checkpoints before the last go through Tune's checkpoint API (a retried or restored
    trial resumes from them); the final one goes to ``final_checkpoints`` and the trial
    reports its path, like a Ray Train trial's.
    """

    def __init__(self, data: TrainingData, on_event, final_checkpoints: RunDirCheckpoints):
        super().__init__(data, on_event)
        self.final_checkpoints = final_checkpoints
        self.last_checkpoint: Path | None = None

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.tune

        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict, checkpoint_dir: Path | None, final: bool) -> None:
        import ray.tune

        if final:
            self.last_checkpoint = self.final_checkpoints.persist(checkpoint_dir)
            return
        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(dict(metrics), checkpoint=checkpoint)


@dataclass(frozen=True)
class LocalOutcome:
    """What a local run leaves: its final checkpoint (None if it diverged)."""

    checkpoint_path: str | None


def run_here(runtime: LocalRuntime, job: LoopConfig) -> LocalOutcome:
    """Run the loop in this process; the final checkpoint's path."""
    train_loop(runtime, job)
    path = runtime.last_checkpoint  # type: ignore[attr-defined]
    final = path is not None and checkpoint_epoch(path) == job.train.epochs
    return LocalOutcome(str(path) if final else None)


def run_standalone(
    job: LoopConfig, data: TrainingData, run_dir: str, events, run_key: str
) -> LocalOutcome:
    """The body of the Ray task that runs a single-worker ``orch run``."""

    def send(event: TrainingEvent) -> None:
        events.put.remote(run_key, event)

    checkpoints = RunDirCheckpoints(Path(run_dir), job.train.checkpoint.keep)
    outcome = run_here(StandaloneRuntime(data, send, checkpoints), job)
    if outcome.checkpoint_path is None:  # a rerun of a finished run trains nothing more
        latest = latest_checkpoint_in(Path(run_dir))
        if latest is not None and checkpoint_epoch(latest) == job.train.epochs:
            return LocalOutcome(str(latest))
    return outcome
