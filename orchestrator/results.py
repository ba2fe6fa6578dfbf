"""What ``Client.run`` returns: the pipeline's typed result, with each stage's part.

Importing this module imports the stages that define those parts (Ray, torch), so the SDK
imports it only when it runs something: ``orch validate`` and ``orch schema`` never do.
``from orchestrator.client import RunResult`` and ``from orchestrator import RunResult``
still work, and import it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from jobs.data import DataSummary
from jobs.profiling import StepProfile
from orchestrator.serve_result import ServeResult
from orchestrator.stages import Registration
from tuning.summary import TrialSummary

if TYPE_CHECKING:
    from orchestrator.stages import StudyRun, TrainingRun
    from tuning.spec import TuneSpec


class StudyReport(BaseModel):
    """A tuning study's outcome (``RunResult.study``)."""

    study: str = Field(description="Study name; its state is under ./.orch/studies/<study>.")
    path: str
    metric: str
    mode: str
    best_trial_id: str
    best_params: dict = Field(description="Dotted spec path -> value of the best trial.")
    best_metric: float
    best_mlflow_run_id: str | None = Field(description="The best trial's child run.")
    refit_mlflow_run_id: str | None = Field(
        None, description="The refit's child run (tune.refit): the model that was logged."
    )
    trials: list[TrialSummary]
    wall_s: float


class RunResult(BaseModel):
    """The outcome of ``Client.run`` (``orch run --json`` prints exactly this)."""

    name: str
    status: Literal["succeeded", "failed"]
    task: Literal["classification", "regression"] | None = Field(
        None, description="The data's task (from its DataInfo), which registration reads."
    )
    metrics: dict[str, float] = Field(
        description="Final epoch's metrics (of the best trial when the pipeline tunes, of "
        "its refit with tune.refit)."
    )
    mlflow_run_id: str = Field(description="The training run, or the study's parent run.")
    tracking_uri: str
    model_uri: str = Field(
        description="MLflow URI of the logged torch model (the best trial's, when tuning)."
    )
    checkpoint: str = Field(description="Checkpoint directory holding the final weights.")
    runner: str | None = Field(
        None,
        description="Who ran the training loop (of the best trial, when tuning): ray-train "
        "(Ray Train workers) or local (one process; train.runner).",
    )
    resumed_from_epochs: list[int] = Field(
        default_factory=list, description="Epochs training resumed from after worker failures."
    )
    worker_nodes: dict[int, str] = Field(
        default_factory=dict, description="Ray node id of each training worker (by rank)."
    )
    data: DataSummary | None = Field(
        None, description="How the data was read: in memory or streamed, rows, fingerprint."
    )
    profile: list[StepProfile] = Field(
        default_factory=list,
        description="train.profile: where the logged model's optimizer step went, per "
        "profiled rank (its files are in the MLflow run's artifacts under profile/).",
    )
    study: StudyReport | None = Field(None, description="The tuning study, when the spec has one.")
    registered: Registration | None = Field(
        None, description="The model version registered in MLflow, and whether the alias moved."
    )
    served: ServeResult | None = Field(
        None, description="The Serve application, when the spec has a serve section."
    )
    endpoint: str | None = Field(
        None, description="HTTP base of the served model: POST <endpoint>/predict."
    )

    @classmethod
    def of_training(cls, name: str, run: TrainingRun) -> RunResult:
        """A training's result (before registration and serving)."""
        result = run.result
        return cls(
            name=name,
            status="succeeded",
            task=run.task,
            metrics={k: float(v) for k, v in result.metrics.items()},
            mlflow_run_id=run.mlflow_run_id,
            tracking_uri=run.tracking_uri,
            model_uri=run.model_uri,
            checkpoint=result.checkpoint_path,
            runner=result.runner,
            resumed_from_epochs=result.resumed_from_epochs,
            worker_nodes=result.worker_nodes,
            data=run.data,
            profile=result.profile,
        )

    @classmethod
    def of_study(cls, name: str, tune: TuneSpec, run: StudyRun) -> RunResult:
        """A study's result: the logged model's (the best trial's, or its refit's)."""
        outcome, best, refit = run.outcome, run.outcome.best, run.refit
        return cls(
            name=name,
            status="succeeded",
            task=run.task,
            metrics={k: float(v) for k, v in run.metrics.items()},
            mlflow_run_id=run.parent_run_id,
            tracking_uri=run.tracking_uri,
            model_uri=run.model_uri,
            checkpoint=run.checkpoint,
            runner=refit.result.runner if refit else best.runner,
            resumed_from_epochs=refit.result.resumed_from_epochs if refit else [],
            worker_nodes=refit.result.worker_nodes if refit else {},
            data=run.data,
            profile=run.profile,
            study=StudyReport(
                study=outcome.study,
                path=outcome.path,
                metric=tune.metric,
                mode=tune.resolved_mode,
                best_trial_id=best.trial_id,
                best_params=best.params,
                best_metric=best.metric,
                best_mlflow_run_id=best.mlflow_run_id,
                refit_mlflow_run_id=refit.mlflow_run_id if refit else None,
                trials=outcome.trials,
                wall_s=outcome.wall_s,
            ),
        )
