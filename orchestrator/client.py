"""The Python SDK. The CLI is a thin layer over it, so the two cannot disagree.

from orchestrator import Client
client = Client()                      # local Ray + ./.orch/ MLflow store
spec = client.validate("pipeline.yaml")
result = client.run("pipeline.yaml", on_event=print)
result.metrics["val_accuracy"], result.mlflow_run_id
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from orchestrator.loader import load_spec
from orchestrator.pipeline import run_training
from orchestrator.spec import PipelineSpec


class RunResult(BaseModel):
    """The outcome of ``Client.run`` (``orch run --json`` prints exactly this)."""

    name: str
    status: Literal["succeeded", "failed"]
    metrics: dict[str, float] = Field(description="Final epoch's metrics.")
    mlflow_run_id: str
    tracking_uri: str
    model_uri: str = Field(description="MLflow URI of the logged torch model.")
    checkpoint: str = Field(description="Ray Train checkpoint holding the final weights.")
    resumed_from_epochs: list[int] = Field(
        default_factory=list, description="Epochs training resumed from after worker failures."
    )


class Client:
    """Runs pipelines on a Ray cluster.

    Args:
        address: Ray address ("auto", "host:port"); None = the job's cluster under
            ``ray job submit``, else a local Ray started on demand.
        show_worker_logs: stream worker stdout/stderr to this process.
    """

    def __init__(self, address: str | None = None, *, show_worker_logs: bool = True):
        self.address = address
        self.show_worker_logs = show_worker_logs

    def validate(self, spec: str | Path, check_data: bool = True) -> PipelineSpec:
        """Load and check a spec file; raises SpecError (file:line: field: fix)."""
        return load_spec(spec, check_data=check_data)

    def run(
        self,
        spec: str | Path | PipelineSpec,
        on_event: Callable[[dict], None] | None = None,
    ) -> RunResult:
        """Run a pipeline to the end and return its result.

        Raises:
            SpecError: invalid spec or data; nothing was started.
            JobFailedError: a stage failed (the MLflow run is marked FAILED).
        """
        pipeline = spec if isinstance(spec, PipelineSpec) else load_spec(spec)
        result, run_id, tracking_uri, model_uri = run_training(
            pipeline,
            address=self.address,
            on_event=on_event,
            show_worker_logs=self.show_worker_logs,
        )
        return RunResult(
            name=pipeline.name,
            status="succeeded",
            metrics={k: float(v) for k, v in result.metrics.items()},
            mlflow_run_id=run_id,
            tracking_uri=tracking_uri,
            model_uri=model_uri,
            checkpoint=result.checkpoint_path,
            resumed_from_epochs=result.resumed_from_epochs,
        )
