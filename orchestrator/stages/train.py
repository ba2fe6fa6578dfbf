"""The train stage: data -> one training (Ray Train + DeepSpeed, or the local runner) -> its
MLflow run and logged model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from jobs.data import DataSummary, TrainingData, example_rows
from jobs.errors import DataError, TrainingError
from jobs.profiling import PROFILE_DIR
from orchestrator.address import RayAddress
from orchestrator.events import StageStarted
from orchestrator.exceptions import JobFailedError, SpecError
from orchestrator.runtime import (
    checkpoint_root,
    connect_ray,
)
from orchestrator.spec import PipelineSpec
from orchestrator.stages.common import (
    EventHandler,
    emit_cluster,
    flush_quietly,
    lineage_tags,
    read_data,
    run_events,
    start_event_hub,
    tracker_for,
    unique_name,
)

if TYPE_CHECKING:
    from jobs.tracking import RunTracker
    from jobs.trainer import TrainResult

# jobs.tracking imports MLflow (about 2 s with its store): a training imports it once the
# local runner's actor is starting, so that the actor's start-up overlaps the import; torch
# comes later still, on a thread, while the driver waits for the training.


def run_training(
    spec: PipelineSpec,
    *,
    address: RayAddress | None = None,
    on_event: EventHandler | None = None,
    show_worker_logs: bool = True,
    run_name: str | None = None,
    check_data: Callable[[], None] | None = None,
) -> TrainingRun:
    """Train and track one pipeline: the trained result, its MLflow run and logged model.

    ``run_name`` fixes the Ray Train run's name: a run of that name under the storage path
    resumes from its latest checkpoint (how a preempted queue job continues).
    ``check_data``: the spec's checks against its data (``load_spec_deferring_data``), made
    before the data is read, while Ray connects.

    Raises:
        SpecError: the data does not fit the spec (nothing was trained).
        JobFailedError: training failed; its MLflow run is marked FAILED.
    """
    emit = on_event or (lambda event: None)
    run_name = run_name or unique_name(spec.name)
    setup = _set_up_training(spec, address, emit, show_worker_logs, run_name, check_data)
    from jobs.tracking import flatten, warm_up_export
    from jobs.trainer import fit  # after the actor's start; no torch yet: jobs.loop_config

    tracker, data, run_id = setup.tracker, setup.data, setup.tracker.run_id
    emit(StageStarted("train", mlflow_run_id=run_id, epochs=spec.train.epochs))
    with tracker:
        tracker.log_params(flatten(spec.model_dump(mode="json")))
        tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
        if setup.local_worker is not None:
            warm_up_export()  # the actor is already up: the driver only waits from here
        try:
            result = fit(
                spec.model, spec.train, data, seed=spec.data.seed, run_name=run_name,
                storage_path=spec.train.storage_path or str(checkpoint_root()),
                on_event=run_events(tracker, emit), local_worker=setup.local_worker,
            )  # fmt: skip
        except TrainingError as exc:
            flush_quietly(tracker)
            raise JobFailedError(f"{spec.name}: {exc} (MLflow run {run_id})") from None
        try:
            tracker.flush()  # the epochs logged while MLflow was away land before the model
        except ConnectionError as exc:
            raise JobFailedError(f"{spec.name}: trained, but {exc}") from None
        emit(StageStarted("log_model"))
        try:
            example = example_rows(data, 5)
        except DataError as exc:  # a streamed file gone after training read it
            flush_quietly(tracker)
            raise JobFailedError(f"{spec.name}: trained, but {exc} (MLflow run {run_id})") from None
        model_uri = tracker.log_model(result.model, data.info, example)
        tracker.set_tags({"orch.model_uri": model_uri, "orch.checkpoint": result.checkpoint_path})
        if result.profile_dir is not None:  # train.profile: trace, operator table, breakdown
            tracker.log_artifacts(result.profile_dir, PROFILE_DIR)
    return TrainingRun(
        result, run_id, setup.tracking_uri, model_uri, data.info.task, DataSummary.of(data)
    )


@dataclass
class TrainingRun:
    """What ``run_training`` leaves: the training's result and where MLflow keeps it."""

    result: TrainResult
    mlflow_run_id: str
    tracking_uri: str
    model_uri: str
    task: str  # classification | regression: the data's (DataInfo.task)
    data: DataSummary | None = None


@dataclass
class _TrainingSetUp:
    """A training ready to hand over: its data, its started MLflow run, and on the local
    runner the actor that will train it (already starting)."""

    data: TrainingData
    tracker: RunTracker
    tracking_uri: str
    local_worker: object | None


class _Connected:
    """Whether this driver's Ray connection is made: a streamed source's statistics pass
    (on the reading thread) waits for it, and never starts a Ray of its own."""

    def __init__(self):
        self._done, self._ok = threading.Event(), False

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self._ok = kind is None
        self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if not self._ok:
            raise SpecError("the Ray connection failed; the data was not read")


def _set_up_training(spec, address, emit, show_worker_logs, run_name, check_data):
    """Data, Ray, MLflow and (local runner) the training actor, overlapped.

    The data is read and MLflow's client and store are set up (about 2 s: its import, the
    store's schema check) on threads while Ray connects (or starts). On the local runner
    the actor's start (process, torch, DeepSpeed: about 5 s) is the longest path: it
    starts as soon as Ray is connected, and MLflow is set up while it does; torch is
    imported on a thread (warm_up_export) once the training is handed over. A data
    problem found meanwhile stops the actor before anything is tracked.
    """
    local = spec.train.resolved_runner == "local"
    ray_ready = _Connected()
    with ThreadPoolExecutor(2, thread_name_prefix="orch-setup") as pool:
        emit(StageStarted("data"))
        reading = pool.submit(read_data, spec, check_data, ray_ready.wait)
        tracking = None if local else pool.submit(tracker_for, spec)
        emit(StageStarted("connect"))
        with ray_ready:
            connection = connect_ray(address, show_worker_logs=show_worker_logs)
        local_worker = None
        if local:  # first: its start is the longest path
            from jobs.local_actor import start_local_worker

            local_worker = start_local_worker(spec.train)
        emit_cluster(connection, emit)
        start_event_hub()
    try:
        data = reading.result()
        tracker, tracking_uri = tracking.result() if tracking else tracker_for(spec)
        tracker.start(run_name, tags=lineage_tags(spec, data, "train"))
    except BaseException:
        if local_worker is not None:  # fit() would have stopped it; nothing will now
            import ray

            ray.kill(local_worker)
        raise
    return _TrainingSetUp(data, tracker, tracking_uri, local_worker)
