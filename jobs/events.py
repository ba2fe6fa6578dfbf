"""What a training loop tells its driver while it runs: a small set of typed events.

Both runners (Ray Train workers and the local runner) send these through ``EventHub`` to
the driver, which hands them to ``on_event``; the CLI's progress bar, MLflow's per-epoch
metrics and a trial's reports to Tune all read them. Match on the class, not a string.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Runner = Literal["ray-train", "local"]


@dataclass(frozen=True)
class WorkerStarted:
    """A worker (or the local runner) started, or restarted after a failure."""

    rank: int
    runner: Runner
    node_id: str
    pid: int
    start_epoch: int
    epochs: int
    resumed_from_epoch: int | None = None
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class EpochEnded:
    """Rank 0's metrics of one epoch (already reduced over ranks).

    ``replayed``: sent again by a worker that resumed from this epoch's checkpoint. A
    worker killed after writing a checkpoint but before its event left the process would
    otherwise lose that epoch's metrics; the driver keeps a replay only when it never got
    the epoch (``jobs.trainer``).
    """

    metrics: dict[str, float]
    checkpointed: bool
    rank: int = 0
    replayed: bool = False
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class TrainingWarning:
    """Something the user should know that does not stop training (e.g. emulated bf16)."""

    message: str
    rank: int = 0


@dataclass(frozen=True)
class Diverged:
    """The loss became NaN or infinite: training stopped, the driver raises this message."""

    message: str
    epoch: int
    rank: int = 0


TrainingEvent = WorkerStarted | EpochEnded | TrainingWarning | Diverged
