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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, Field, ValidationError

from jobs.data import PreparedData, prepare
from jobs.errors import DataError, TrainingError
from jobs.events import EpochEnded, TrainingEvent, WorkerStarted
from jobs.spec import ModelSpec
from orchestrator.address import RayAddress
from orchestrator.exceptions import JobFailedError, SpecError
from orchestrator.runtime import (
    artifact_root,
    checkpoint_root,
    connect_ray,
    default_tracking_uri,
    study_root,
)
from orchestrator.spec import PipelineSpec
from serve.registry import Registry, RegistryError, decide
from tuning.errors import TuningError
from tuning.space import apply_values
from tuning.spec import metric_problem, refit_train

if TYPE_CHECKING:
    from jobs.tracking import RunTracker
    from jobs.trainer import TrainResult
    from tuning.study import StudyOutcome, StudyState

# tuning.study and tuning.tracking import Ray Tune (about 1 s): only studies import them.
# jobs.tracking imports MLflow (about 2 s with its store): a training imports it once the
# local runner's actor is starting, so that the actor's start-up overlaps the import; torch
# comes later still, on a thread, while the driver waits for the training.

EventHandler = Callable[[dict], None]


def _connected(connection, emit) -> None:
    """Say where the Ray dashboard is, and which file holds the token it asks for."""
    emit({
        "type": "cluster",
        "dashboard_url": connection.dashboard_url,
        "token_path": connection.token_path,
    })  # fmt: skip


def _start_event_hub() -> None:
    """Start this driver's event hub as soon as Ray is connected: its process starts (a few
    seconds here) alongside everything else, not when the first worker has an event."""
    from jobs.event_hub import event_hub

    event_hub()


def spec_hash(spec: PipelineSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def _ray_job_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_job_id()
    except Exception:  # not connected
        return ""


def _prepare_data(spec: PipelineSpec, emit: EventHandler) -> PreparedData:
    emit({"type": "stage", "stage": "data"})
    return _read_data(spec)


def _read_data(spec: PipelineSpec, check: Callable[[], None] | None = None) -> PreparedData:
    """The spec's data, read and split; SpecError when it does not fit the spec."""
    if check is not None:
        check()
    try:
        data = prepare(spec.data)
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
    return data


def _tracker(spec: PipelineSpec) -> tuple[RunTracker, str]:
    from jobs.tracking import RunTracker

    tracking_uri = spec.tracking.tracking_uri or default_tracking_uri()
    return RunTracker(tracking_uri, spec.experiment, artifact_root=str(artifact_root())), (
        tracking_uri
    )


def _unique_name(prefix: str) -> str:
    # Unique: Ray Train resumes a run whose name and storage path it has seen before.
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _lineage_tags(spec: PipelineSpec, data: PreparedData, stage: str) -> dict[str, str]:
    return {
        "orch.pipeline": spec.name,
        "orch.spec_hash": spec_hash(spec),
        "orch.data_fingerprint": data.info.fingerprint,
        "orch.ray_job_id": _ray_job_id(),
        "orch.stage": stage,
    }


def _run_events(tracker: RunTracker, emit: EventHandler) -> Callable[[TrainingEvent], None]:
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


def run_training(
    spec: PipelineSpec,
    *,
    address: RayAddress | None = None,
    on_event: EventHandler | None = None,
    show_worker_logs: bool = True,
    run_name: str | None = None,
    check_data: Callable[[], None] | None = None,
) -> tuple[TrainResult, str, str, str]:
    """Train and track one pipeline. Returns (result, mlflow_run_id, tracking_uri, model_uri).

    ``run_name`` fixes the Ray Train run's name: a run of that name under the storage path
    resumes from its latest checkpoint (how a preempted queue job continues).
    ``check_data``: the spec's checks against its data (``load_spec_deferring_data``), made
    before the data is read, while Ray connects.

    Raises:
        SpecError: the data does not fit the spec (nothing was trained).
        JobFailedError: training failed; its MLflow run is marked FAILED.
    """
    emit = on_event or (lambda event: None)
    run_name = run_name or _unique_name(spec.name)
    setup = _set_up_training(spec, address, emit, show_worker_logs, run_name, check_data)
    from jobs.tracking import flatten, warm_up_export
    from jobs.trainer import fit  # after the actor's start; no torch yet: jobs.loop_config

    tracker, data, run_id = setup.tracker, setup.data, setup.tracker.run_id
    emit({"type": "stage", "stage": "train", "mlflow_run_id": run_id, "epochs": spec.train.epochs})
    with tracker:
        tracker.log_params(flatten(spec.model_dump(mode="json")))
        tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
        if setup.local_worker is not None:
            warm_up_export()  # the actor is already up: the driver only waits from here
        try:
            result = fit(
                spec.model, spec.train, data, seed=spec.data.seed, run_name=run_name,
                storage_path=spec.train.storage_path or str(checkpoint_root()),
                on_event=_run_events(tracker, emit), local_worker=setup.local_worker,
            )  # fmt: skip
        except TrainingError as exc:
            _flush_quietly(tracker)
            raise JobFailedError(f"{spec.name}: {exc} (MLflow run {run_id})") from None
        try:
            tracker.flush()  # the epochs logged while MLflow was away land before the model
        except ConnectionError as exc:
            raise JobFailedError(f"{spec.name}: trained, but {exc}") from None
        emit({"type": "stage", "stage": "log_model"})
        example = data.info.raw_features(data.x_val[:5])
        model_uri = tracker.log_model(result.model, data.info, example)
        tracker.set_tags({"orch.model_uri": model_uri, "orch.checkpoint": result.checkpoint_path})
    return result, run_id, setup.tracking_uri, model_uri


@dataclass
class _TrainingSetUp:
    """A training ready to hand over: its data, its started MLflow run, and on the local
    runner the actor that will train it (already starting)."""

    data: PreparedData
    tracker: RunTracker
    tracking_uri: str
    local_worker: object | None


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
    with ThreadPoolExecutor(2, thread_name_prefix="orch-setup") as pool:
        emit({"type": "stage", "stage": "data"})
        reading = pool.submit(_read_data, spec, check_data)
        tracking = None if local else pool.submit(_tracker, spec)
        emit({"type": "stage", "stage": "connect"})
        connection = connect_ray(address, show_worker_logs=show_worker_logs)
        local_worker = None
        if local:  # first: its start is the longest path
            from jobs.local_actor import start_local_worker

            local_worker = start_local_worker(spec.train)
        _connected(connection, emit)
        _start_event_hub()
    try:
        data = reading.result()
        tracker, tracking_uri = tracking.result() if tracking else _tracker(spec)
        tracker.start(run_name, tags=_lineage_tags(spec, data, "train"))
    except BaseException:
        if local_worker is not None:  # fit() would have stopped it; nothing will now
            import ray

            ray.kill(local_worker)
        raise
    return _TrainingSetUp(data, tracker, tracking_uri, local_worker)


def _flush_quietly(tracker: RunTracker) -> None:
    try:
        tracker.flush(timeout_s=60)
    except ConnectionError:
        pass


def _find_study_to_resume(spec: PipelineSpec, root: Path) -> tuple[Path, StudyState]:
    from tuning.study import studies

    unfinished = [(p, s) for p, s in studies(root, spec.name) if s.status != "finished"]
    if not unfinished:
        raise SpecError(
            f"--resume: no unfinished study of pipeline {spec.name!r} under {root}; "
            "run without --resume to start one"
        )
    path, state = unfinished[-1]
    if state.spec_hash != spec_hash(spec):
        raise SpecError(
            f"--resume: the spec changed since study {state.study} started (spec hash "
            f"{state.spec_hash} then, {spec_hash(spec)} now); restore the spec to resume it, or "
            "run without --resume to start a new study"
        )
    return path, state


def run_study_pipeline(
    spec: PipelineSpec,
    *,
    address: RayAddress | None = None,
    on_event: EventHandler | None = None,
    show_worker_logs: bool = False,
    resume: bool = False,
    run_name: str | None = None,
) -> StudyRun:
    """Run the pipeline's tune study; log the best model on the study's MLflow run.

    The best model is the best trial's, or with ``tune.refit`` its configuration trained
    again with those train settings.

    Raises:
        SpecError: invalid data for the spec, or nothing to resume.
        JobFailedError: no trial completed; the parent run is marked FAILED.
    """
    # (no torch.export warm-up here: on a thread beside the study it slows Tune's loop and
    # the trials by more than the 2 s it saves at the end)
    from tuning.study import run_study
    from tuning.tracking import StudyTracker

    assert spec.tune is not None
    emit = on_event or (lambda event: None)
    study_dir, state = _study_to_continue(spec, resume, run_name)
    resume = state is not None
    data = _prepare_data(spec, emit)
    if problem := metric_problem(spec.tune.metric, data.info.task):
        raise SpecError(f"tune.metric: {problem}")
    emit({"type": "stage", "stage": "connect"})
    _connected(connect_ray(address, show_worker_logs=show_worker_logs), emit)
    _start_event_hub()
    tracker, tracking_uri = _tracker(spec)
    study_dir, state = _open_study(spec, data, tracker, study_dir, state, run_name)
    parent_id = tracker.run_id
    emit({"type": "stage", "stage": "tune", "mlflow_run_id": parent_id, "study": state.study,
          "resumed": resume})  # fmt: skip
    study_tracker = StudyTracker(tracker, spec.tune, state.study, spec.name)

    def track(event: dict) -> None:
        study_tracker(event)
        emit(event)

    sections = spec.model_dump(mode="json", include={"model", "train"})
    with tracker:
        if not resume:
            _log_spec(spec, tracker)
        try:
            outcome = run_study(
                study=state.study, study_dir=study_dir, sections=sections, tune=spec.tune,
                data=data, seed=spec.data.seed, trials_storage=_trials_storage(spec, state.study),
                on_event=track, resume=resume,
            )  # fmt: skip
        except TuningError as exc:
            study_tracker.wait()
            _mark(state, study_dir, "failed")
            raise JobFailedError(f"{spec.name}: {exc} (MLflow run {parent_id})") from None
        study_tracker.finish(outcome.trials, outcome.best)
        if outcome.best is None or outcome.best.checkpoint is None:
            _mark(state, study_dir, "failed")
            raise _nothing_completed(spec, state.study, outcome, parent_id)
        best_sections = apply_values(sections, outcome.best.params)
        best = _best_model(spec, state.study, outcome, best_sections, data, tracker, emit)
        emit({"type": "stage", "stage": "log_model"})
        model_uri = _log_best(spec, best, best_sections, data, tracker)
        _mark(state, study_dir, "finished")
    return StudyRun(
        outcome=outcome,
        parent_run_id=parent_id,
        tracking_uri=tracking_uri,
        model_uri=model_uri,
        metrics=best.metrics,
        checkpoint=best.checkpoint,
        refit=best.refit,
    )


def _log_spec(spec: PipelineSpec, tracker: RunTracker) -> None:
    """The spec as the study run's params (flattened) and as its spec.yaml."""
    from jobs.tracking import flatten

    dumped = spec.model_dump(mode="json", by_alias=True)
    tracker.log_params(flatten(dumped))
    tracker.log_text(yaml.safe_dump(dumped, sort_keys=False), "spec.yaml")


def _trials_storage(spec: PipelineSpec, study: str) -> str | None:
    """Where the trials keep checkpoints: under ``train.storage_path`` when it is set (a
    path every node reaches), else the study's own folder (None)."""
    if not spec.train.storage_path:
        return None
    return f"{spec.train.storage_path.rstrip('/')}/studies/{study}/trials"


def _log_best(spec, best: _BestModel, best_sections: dict, data, tracker) -> str:
    """The best model and its spec on the study's run; returns the model's URI."""
    example = data.info.raw_features(data.x_val[:5])
    model_uri = tracker.log_model(best.model, data.info, example)
    best_spec = spec.model_dump(mode="json", by_alias=True) | best_sections
    tracker.log_text(yaml.safe_dump(best_spec, sort_keys=False), "best_spec.yaml")
    tracker.set_tags({"orch.model_uri": model_uri, "orch.checkpoint": best.checkpoint})
    return model_uri


def _study_to_continue(
    spec: PipelineSpec, resume: bool, run_name: str | None
) -> tuple[Path | None, StudyState | None]:
    """The study a run continues: a named one that ran before (a preempted queue job), or
    with ``--resume`` the pipeline's last unfinished one; (None, None) for a new study."""
    from tuning.study import STATE_FILE, StudyState

    root = study_root()
    if run_name is not None and (root / run_name / STATE_FILE).exists():
        state = StudyState.read(root / run_name)
        return (root / run_name, state) if state.status != "finished" else (None, None)
    if resume:
        return _find_study_to_resume(spec, root)
    return None, None


def _open_study(
    spec: PipelineSpec,
    data: PreparedData,
    tracker: RunTracker,
    study_dir: Path | None,
    state: StudyState | None,
    run_name: str | None,
) -> tuple[Path, StudyState]:
    """Reopen the continued study's MLflow run, or start a new study's; its state written."""
    from tuning.study import StudyState

    if state is not None:
        tracker.reopen(state.parent_run_id)
        state.status = "running"
    else:
        name = run_name or _unique_name(f"{spec.name}-study")
        study_dir = study_root() / name
        tracker.start(name, tags=_lineage_tags(spec, data, "tune") | {"orch.study": name})
        state = StudyState(
            study=name, pipeline=spec.name, spec_hash=spec_hash(spec), parent_run_id=tracker.run_id
        )
    state.write(study_dir)
    return study_dir, state


def _mark(state: StudyState, study_dir: Path, status: str) -> None:
    state.status = status
    state.write(study_dir)


def _nothing_completed(
    spec: PipelineSpec, study: str, outcome: StudyOutcome, parent_id: str
) -> JobFailedError:
    failed = [t for t in outcome.trials if t.status == "failed"]
    why = f"; first failure: {failed[0].reason}" if failed else ""
    return JobFailedError(
        f"{spec.name}: no trial of study {study} completed its {spec.train.epochs} epochs "
        f"({len(outcome.trials)} trials{why}); MLflow run {parent_id}"
    )


@dataclass
class _BestModel:
    """The model a study logs: the best trial's, or its configuration trained again."""

    model: object
    metrics: dict
    checkpoint: str
    refit: RefitRun | None


def _best_model(spec, study, outcome, best_sections, data, tracker, emit) -> _BestModel:
    from jobs.trainer import load_trained_model

    if spec.tune.refit is not None:
        refit = _refit(spec, study, best_sections, data, tracker, emit)
        result = refit.result
        return _BestModel(result.model, result.metrics, result.checkpoint_path, refit)
    best_model = ModelSpec.model_validate(best_sections["model"])
    model, metrics = load_trained_model(outcome.best.checkpoint, best_model)
    return _BestModel(model, metrics, outcome.best.checkpoint, None)


@dataclass
class RefitRun:
    """The best configuration trained again with ``tune.refit`` (its own MLflow run)."""

    result: TrainResult
    mlflow_run_id: str


@dataclass
class StudyRun:
    """What ``run_study_pipeline`` leaves: the study, and the model it logged."""

    outcome: StudyOutcome
    parent_run_id: str
    tracking_uri: str
    model_uri: str
    metrics: dict = field(metadata={"doc": "Final metrics of the logged model."})
    checkpoint: str = field(metadata={"doc": "The logged model's final checkpoint."})
    refit: RefitRun | None = None


def _refit(
    spec: PipelineSpec,
    study: str,
    best_sections: dict,
    data: PreparedData,
    parent: RunTracker,
    emit: EventHandler,
) -> RefitRun:
    """Train the best trial's configuration with ``tune.refit`` on top, as a child run.

    The run is named after the study, so a refit that was interrupted (a killed driver, a
    preempted queue job) resumes from its checkpoint when the study is resumed.

    Raises:
        JobFailedError: the refit does not fit the cluster, or training failed.
    """
    from jobs.tracking import flatten
    from jobs.trainer import fit
    from tuning.study import concurrency_cap

    try:
        train = refit_train(best_sections["train"], spec.tune.refit)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise JobFailedError(
            f"{spec.name}: tune.refit on the best trial's values: "
            f"train.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    model = ModelSpec.model_validate(best_sections["model"])
    demand = {k: v * train.workers for k, v in train.resources_per_worker.items()}
    cluster = {k: float(v) for k, v in _cluster_resources().items()}
    if concurrency_cap(demand, cluster) < 1:
        raise JobFailedError(
            f"{spec.name}: tune.refit needs {demand} (workers x resources_per_worker) but the "
            f"cluster has { ({k: cluster.get(k, 0.0) for k in demand}) }; lower tune.refit's "
            "workers or resources"
        )
    name = f"{study}-refit"
    child = parent.child()
    existing = child.find_runs({"orch.study": study, "orch.stage": "refit"})
    if existing:
        child.reopen(existing[0])
    else:
        child.start(
            name,
            tags={"orch.study": study, "orch.stage": "refit", "orch.pipeline": spec.name},
            parent_run_id=parent.run_id,
        )
        child.log_params(flatten({"train": train.model_dump(mode="json")}))
    emit({"type": "stage", "stage": "refit", "mlflow_run_id": child.run_id, "epochs": train.epochs})
    with child:
        try:
            result = fit(
                model,
                train,
                data,
                seed=spec.data.seed,
                run_name=name,
                storage_path=spec.train.storage_path or str(checkpoint_root()),
                on_event=_run_events(child, emit),
            )
        except TrainingError as exc:
            _flush_quietly(child)
            raise JobFailedError(f"{spec.name}: refit: {exc} (MLflow run {child.run_id})") from None
        child.flush()
        child.set_tags({"orch.checkpoint": result.checkpoint_path})
    parent.set_tags({"orch.refit_run_id": child.run_id})
    return RefitRun(result=result, mlflow_run_id=child.run_id)


def _cluster_resources() -> dict:
    import ray

    return ray.cluster_resources()


class Registration(BaseModel):
    """What the register stage did (``RunResult.registered``)."""

    model_name: str
    version: str
    alias: str
    promoted: bool
    reason: str = Field(description="Why the alias moved, or why it did not.")
    model_uri: str = Field(description="models:/<name>/<version>")


def run_registration(
    spec: PipelineSpec,
    *,
    run_id: str,
    model_uri: str,
    tracking_uri: str,
    metrics: dict,
    task: str,
    on_event: EventHandler | None = None,
) -> Registration:
    """Register the run's model with lineage tags; move the alias if promote_if holds.

    Lineage comes from the run's own MLflow tags, so this stage needs only the run id.
    """
    emit = on_event or (lambda event: None)
    from jobs.tracking import run_tags

    emit({"type": "stage", "stage": "register"})
    run = run_tags(run_id, tracking_uri)
    lineage = {
        "orch.pipeline": spec.name,
        "orch.spec_hash": run.get("orch.spec_hash", spec_hash(spec)),
        "orch.data_fingerprint": run.get("orch.data_fingerprint", ""),
        "orch.mlflow_run_id": run_id,
        "orch.ray_job_id": run.get("orch.ray_job_id", ""),
        "orch.trial_id": run.get("orch.best_trial_id", ""),
        "orch.study": run.get("orch.study", ""),
    }
    name, alias = spec.registered_model_name, spec.register.alias
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    registry = Registry(tracking_uri)
    try:
        version = registry.register(model_uri, name, lineage, numeric)
        metric, mode = spec.promotion_metric(task)
        holder = registry.alias_holder(name, alias)
        current = (holder, registry.metric_of(name, holder, metric)) if holder else None
        decision = decide(spec.register.promote_if, metric, mode, numeric.get(metric), current)
        if decision.promote:
            registry.promote(name, version, alias)
    except RegistryError as exc:
        raise JobFailedError(f"{spec.name}: registering the model failed: {exc}") from None
    registration = Registration(
        model_name=name,
        version=version,
        alias=alias,
        promoted=decision.promote,
        reason=decision.reason,
        model_uri=f"models:/{name}/{version}",
    )
    emit({"type": "registered", "registration": registration})
    return registration
