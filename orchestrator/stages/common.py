"""What the stages share: reading the data, connecting to Ray, the MLflow run's tracker,
the names and lineage tags of runs, and relaying a training's events.

Each stage announces itself through ``on_event`` (``orchestrator.events.StageStarted``); the
trainer's own events (worker started, epoch metrics) pass through the same callback, so a
CLI, a notebook or a test can watch one stream.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from jobs.data import TrainingData, load
from jobs.errors import DataError
from jobs.events import EpochEnded, Event, TrainingEvent, WorkerStarted
from orchestrator.events import ClusterFound, StageStarted
from orchestrator.exceptions import SpecError
from orchestrator.runtime import (
    artifact_root,
    default_tracking_uri,
)
from orchestrator.spec import PipelineSpec

if TYPE_CHECKING:
    from jobs.tracking import RunTracker


EventHandler = Callable[[Event], None]


def emit_cluster(connection, emit) -> None:
    """Say where the Ray dashboard is, and which file holds the token it asks for."""
    emit(ClusterFound(connection.dashboard_url, connection.token_path))


def start_event_hub() -> None:
    """Start this driver's event hub as soon as Ray is connected: its process starts (a few
    seconds here) alongside everything else, not when the first worker has an event."""
    from jobs.event_hub import event_hub

    event_hub()


def spec_hash(spec: PipelineSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def ray_job_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_job_id()
    except Exception:  # not connected
        return ""


def prepare_data(
    spec: PipelineSpec, emit: EventHandler, before_stream: Callable[[], None] | None = None
) -> TrainingData:
    emit(StageStarted("data"))
    return read_data(spec, before_stream=before_stream)


def read_data(
    spec: PipelineSpec,
    check: Callable[[], None] | None = None,
    before_stream: Callable[[], None] | None = None,
) -> TrainingData:
    """The spec's data, read into memory or planned for streaming (``jobs.data.load``);
    SpecError when it does not fit the spec. ``before_stream``: see ``load``."""
    if check is not None:
        check()
    try:
        data = load(spec.data, before_stream)
    except DataError as exc:
        raise SpecError(f"{exc.field}: {exc.message}") from None
    batch_sizes = {spec.train.batch_size}
    if spec.tune is not None and "train.batch_size" in spec.tune.space:
        batch_sizes |= set(spec.tune.space["train.batch_size"].candidate_values())
    too_big = sorted(b for b in batch_sizes if b > data.info.n_train)
    if too_big:
        raise SpecError(
            f"train.batch_size {too_big[-1]} is larger than the training split "
            f"({data.info.n_train} rows); lower it or lower data.validation_split"
        )
    if spec.train.profile is not None and spec.train.steps_per_epoch is None:
        try:  # the fewest steps any trial's batch size gives
            spec.train.check_profile_fits(data.info.n_train // max(batch_sizes))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    return data


def tracker_for(spec: PipelineSpec) -> tuple[RunTracker, str]:
    from jobs.tracking import RunTracker

    tracking_uri = spec.tracking.tracking_uri or default_tracking_uri()
    return RunTracker(tracking_uri, spec.experiment, artifact_root=str(artifact_root())), (
        tracking_uri
    )


def unique_name(prefix: str) -> str:
    # Unique: Ray Train resumes a run whose name and storage path it has seen before.
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def lineage_tags(spec: PipelineSpec, data: TrainingData, stage: str) -> dict[str, str]:
    return {
        "orch.pipeline": spec.name,
        "orch.spec_hash": spec_hash(spec),
        "orch.data_fingerprint": data.info.fingerprint,
        "orch.ray_job_id": ray_job_id(),
        "orch.stage": stage,
        **submitter(),
    }


def submitter() -> dict[str, str]:
    """Whose run this is: the queue's user and team for a queued job (the scheduler puts
    them in the job's environment), else whoever runs ``orch run`` (no team)."""
    import getpass

    return {
        "orch.user": os.environ.get("ORCH_USER") or getpass.getuser(),
        "orch.team": os.environ.get("ORCH_TEAM", ""),
    }


def run_events(tracker: RunTracker, emit: EventHandler) -> Callable[[TrainingEvent], None]:
    """Mirror a training's events on its MLflow run (without waiting on MLflow), then emit."""
    from jobs.tracking import warm_up_export

    def track(event: TrainingEvent) -> None:
        if isinstance(event, EpochEnded):
            tracker.log_metrics_later(event.metrics, step=int(event.metrics["epoch"]))
            # Ray Train's start-up (its controller's and workers' processes, their imports)
            # is CPU-bound: an export on a thread then would hold the driver's GIL and a
            # core. Once an epoch has ended, the driver only waits.
            warm_up_export()
        elif isinstance(event, WorkerStarted):
            # where each rank runs (node ids): multi-node placement is checked against these
            tags = {f"orch.worker_node.{event.rank}": event.node_id, "orch.runner": event.runner}
            if event.rank == 0 and event.resumed_from_epoch:
                tags["orch.resumed_from_epoch"] = str(event.resumed_from_epoch)
            tracker.set_tags_later(tags)
        emit(event)

    return track


def flush_quietly(tracker: RunTracker) -> None:
    try:
        tracker.flush(timeout_s=60)
    except ConnectionError:
        pass
