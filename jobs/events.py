"""What a training loop tells its driver while it runs: a small set of typed events.

Both runners (Ray Train workers and the local runner) send these through ``EventHub`` to
the driver, which hands them to ``on_event``; the CLI's progress bar, MLflow's per-epoch
metrics and a trial's reports to Tune all read them. Match on the class, not a string.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

Runner = Literal["ray-train", "local"]


class Event:
    """Base of every event orch hands to ``on_event`` (training, study, stage events):
    match on the class (``isinstance(event, EpochEnded)``) and read its fields;
    ``kind`` names it in logs and JSON."""

    kind: ClassVar[str]


@dataclass(frozen=True)
class WorkerStarted(Event):
    """A worker (or the local runner) started, or restarted after a failure."""

    kind: ClassVar[str] = "worker_started"

    rank: int
    runner: Runner
    node_id: str
    pid: int
    start_epoch: int
    epochs: int
    resumed_from_epoch: int | None = None
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class EpochEnded(Event):
    """Rank 0's metrics of one epoch (already reduced over ranks).

    ``replayed``: sent again by a worker that resumed from this epoch's checkpoint. A
    worker killed after writing a checkpoint but before its event left the process would
    otherwise lose that epoch's metrics; the driver keeps a replay only when it never got
    the epoch (``jobs.trainer``).
    """

    kind: ClassVar[str] = "epoch_ended"

    metrics: dict[str, float]
    checkpointed: bool
    rank: int = 0
    replayed: bool = False
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class TrainingWarning(Event):
    """Something the user should know that does not stop training (e.g. emulated bf16)."""

    kind: ClassVar[str] = "training_warning"

    message: str
    rank: int = 0


@dataclass(frozen=True)
class Diverged(Event):
    """The loss became NaN or infinite: training stopped, the driver raises this message."""

    kind: ClassVar[str] = "diverged"

    message: str
    epoch: int
    rank: int = 0


TrainingEvent = WorkerStarted | EpochEnded | TrainingWarning | Diverged
