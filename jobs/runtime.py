"""What the training loop needs from whoever runs it, and the Ray Train implementation.

The loop (``jobs.worker.train_loop``) never calls ``ray.train`` itself: it asks its runtime
for its rank, device, data, last checkpoint, and hands it metrics and checkpoints. Two
runtimes exist: ``RayTrainRuntime`` (a TorchTrainer worker, one of N) and
``jobs.local.LocalRuntime`` (the loop runs in the calling process: a Tune trial actor or
the one actor of a single-worker ``orch run``). One loop, two runners.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from jobs.events import Runner, TrainingEvent
from jobs.prepared import DataInfo
from jobs.splits import DataIteratorBlocks, ShardSplit, Split


class TrainingRuntime(ABC):
    """The loop's view of its runner. Subclasses fill the attributes before the loop runs."""

    runner: Runner
    rank: int
    world_size: int
    device: torch.device
    node_id: str
    train_split: Split
    val_split: Split

    @abstractmethod
    def init_process_group(self) -> None:
        """Make torch.distributed (and so DeepSpeed) usable in this process."""

    @abstractmethod
    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The directory of the checkpoint to resume from, or None for a fresh start."""

    @abstractmethod
    def report(self, metrics: dict, checkpoint_dir: Path | None, final: bool) -> None:
        """One epoch's metrics, with the checkpoint every rank wrote into ``checkpoint_dir``.

        Ranks other than 0 may have written nothing there. ``final``: the last epoch.
        """

    @abstractmethod
    def emit(self, event: TrainingEvent) -> None:
        """Send an event to the driver (ignored where no driver listens)."""


class RayTrainRuntime(TrainingRuntime):
    """One worker of a Ray Train TorchTrainer run."""

    runner: Runner = "ray-train"

    def __init__(
        self,
        splits: dict[str, Split] | None,
        info: DataInfo,
        events,
        run_key: str,
        resume_from: str | None = None,
    ):
        import ray
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node_id = ray.get_runtime_context().get_node_id()
        self._events = events
        self._run_key = run_key
        self._resume_from = resume_from
        if splits is None:  # Ray Data: this rank's shards (None: a later pipeline stage)
            splits = {}
            for name in ("train", "val"):
                shard = ray.train.get_dataset_shard(name)
                splits[name] = ShardSplit(DataIteratorBlocks(shard)) if shard is not None else None
        self.train_split = splits["train"]
        self.val_split = splits["val"]

    def init_process_group(self) -> None:
        pass  # TorchTrainer's backend made the process group before the loop started

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield Path(self._resume_from) if self._resume_from else None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict, checkpoint_dir: Path | None, final: bool) -> None:
        import ray.train
        from ray.train import Checkpoint

        if checkpoint_dir is not None and any(checkpoint_dir.iterdir()):
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir))
        else:
            ray.train.report(metrics)

    def emit(self, event: TrainingEvent) -> None:
        if self._events is not None:
            self._events.put.remote(self._run_key, event)
