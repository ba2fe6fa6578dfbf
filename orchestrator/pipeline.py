"""Runs a pipeline's stages in order: data -> train (Ray Train + DeepSpeed) -> MLflow.

Each stage announces itself through ``on_event`` ({"type": "stage", "stage": ...}); the
trainer's own events (worker started, epoch metrics) pass through the same callback, so a
CLI, a notebook or a test can watch one stream.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable

import yaml

from jobs.data import prepare
from jobs.errors import DataError, TrainingError
from jobs.tracking import RunTracker, flatten
from jobs.trainer import TrainResult, fit
from orchestrator.exceptions import JobFailedError, SpecError
from orchestrator.runtime import (
    artifact_root,
    checkpoint_root,
    connect_ray,
    default_tracking_uri,
)
from orchestrator.spec import PipelineSpec

EventHandler = Callable[[dict], None]


def spec_hash(spec: PipelineSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def _ray_job_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_job_id()
    except Exception:  # not connected
        return ""


def run_training(
    spec: PipelineSpec,
    *,
    address: str | None = None,
    on_event: EventHandler | None = None,
    show_worker_logs: bool = True,
) -> tuple[TrainResult, str, str, str]:
    """Train and track one pipeline. Returns (result, mlflow_run_id, tracking_uri, model_uri).

    Raises:
        SpecError: the data does not fit the spec (nothing was trained).
        JobFailedError: training failed; its MLflow run is marked FAILED.
    """
    emit = on_event or (lambda event: None)

    emit({"type": "stage", "stage": "data"})
    try:
        data = prepare(spec.data)
    except DataError as exc:
        raise SpecError(f"{exc.field}: {exc.message}") from None
    if spec.train.batch_size > data.info.n_train:
        raise SpecError(
            f"train.batch_size ({spec.train.batch_size}) is larger than the training split "
            f"({data.info.n_train} rows); lower it or lower data.validation_split"
        )

    emit({"type": "stage", "stage": "connect"})
    connect_ray(address, show_worker_logs=show_worker_logs)

    tracking_uri = spec.tracking.tracking_uri or default_tracking_uri()
    tracker = RunTracker(tracking_uri, spec.experiment, artifact_root=str(artifact_root()))
    # Unique: Ray Train resumes a run whose name and storage path it has seen before.
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_id = tracker.start(
        run_name,
        tags={
            "orch.pipeline": spec.name,
            "orch.spec_hash": spec_hash(spec),
            "orch.data_fingerprint": data.info.fingerprint,
            "orch.ray_job_id": _ray_job_id(),
            "orch.stage": "train",
        },
    )
    emit({"type": "stage", "stage": "train", "mlflow_run_id": run_id, "epochs": spec.train.epochs})

    def track(event: dict) -> None:
        if event["type"] == "epoch":
            metrics = event["metrics"]
            tracker.log_metrics(metrics, step=int(metrics["epoch"]))
        elif (
            event["type"] == "worker_started" and event["rank"] == 0 and event["resumed_from_epoch"]
        ):
            tracker.set_tags({"orch.resumed_from_epoch": str(event["resumed_from_epoch"])})
        emit(event)

    with tracker:
        tracker.log_params(flatten(spec.model_dump(mode="json")))
        tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
        try:
            result = fit(
                spec.model,
                spec.train,
                data,
                seed=spec.data.seed,
                run_name=run_name,
                storage_path=spec.train.storage_path or str(checkpoint_root()),
                on_event=track,
            )
        except TrainingError as exc:
            raise JobFailedError(f"{spec.name}: {exc} (MLflow run {run_id})") from None
        emit({"type": "stage", "stage": "log_model"})
        example = data.x_val[:5] * data.info.feature_std + data.info.feature_mean
        model_uri = tracker.log_model(result.model, data.info, example)
        tracker.set_tags({"orch.model_uri": model_uri, "orch.checkpoint": result.checkpoint_path})
    return result, run_id, tracking_uri, model_uri
