"""What one training needs besides its runtime, and the names of a checkpoint's files.

Torch-free, apart from ``jobs.worker``: a driver on the local runner hands its training to
the actor and waits, and only then imports torch (about 2 s here) on a thread, to read the
result back; importing it before the hand-over would put those seconds on the run's path.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.prepared import DataInfo
from jobs.spec import ModelSpec, TrainSpec

STATE_FILE = "orch_state.json"
MODEL_FILE = "model_state.pt"
DATA_INFO_FILE = "data_info.json"


@dataclass(frozen=True)
class LoopConfig:
    """What one training needs besides its runtime: the spec sections, the data, the seed,
    and where the driver imported an import-path model from (``jobs.plugins.import_root``)."""

    model: ModelSpec
    train: TrainSpec
    info: DataInfo
    seed: int
    import_root: str | None = None
