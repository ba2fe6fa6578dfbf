"""One trial as the CLI, ``--json`` and the MLflow trials table show it (no Ray import)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

TrialStatus = Literal["pending", "running", "completed", "stopped", "failed"]


class TrialSummary(BaseModel):
    """One trial as the CLI, ``--json`` and the MLflow trials table show it."""

    trial_id: str
    status: TrialStatus = "pending"
    params: dict = Field(default_factory=dict, description="Dotted spec path -> value.")
    epoch: int = Field(0, description="Last epoch reported.")
    metric: float | None = Field(None, description="The study metric at the last epoch.")
    best_metric: float | None = Field(None, description="Its best value over the epochs.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Last epoch's metrics.")
    reason: str | None = Field(None, description="Why it stopped early, or why it failed.")
    checkpoint: str | None = Field(None, description="Final checkpoint (completed trials).")
    mlflow_run_id: str | None = None
    runner: str | None = Field(
        None, description="local (in the trial's actor) or ray-train (Ray Train workers)."
    )
    pid: int | None = Field(
        None, description="Process of the trial's actor; trials reuse actors, so pids repeat."
    )
