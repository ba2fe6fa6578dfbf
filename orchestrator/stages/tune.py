"""The tune stage: a Ray Tune study over the spec's space, its MLflow parent and child runs,
then the best model (the best trial's, or with ``tune.refit`` trained again) logged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from jobs.data import DataSummary, TrainingData, example_rows
from jobs.errors import TrainingError
from jobs.profiling import StepProfile
from jobs.spec import ModelSpec
from orchestrator.address import RayAddress
from orchestrator.events import StageStarted
from orchestrator.exceptions import JobFailedError, SpecError
from orchestrator.runtime import (
    checkpoint_root,
    connect_ray,
    study_root,
)
from orchestrator.spec import PipelineSpec
from orchestrator.stages.common import (
    EventHandler,
    emit_cluster,
    flush_quietly,
    lineage_tags,
    prepare_data,
    run_events,
    spec_hash,
    start_event_hub,
    tracker_for,
    unique_name,
)
from tuning.errors import TuningError
from tuning.space import apply_values
from tuning.spec import metric_problem, refit_train

if TYPE_CHECKING:
    from jobs.tracking import RunTracker
    from jobs.trainer import TrainResult
    from tuning.study import StudyOutcome, StudyState

# tuning.study and tuning.tracking import Ray Tune (about 1 s): only studies import them.


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


class _Connection:
    """The study's Ray connection, made once: before a streamed source's statistics pass
    (which runs on Ray), else after the data is read (a data problem starts no Ray)."""

    def __init__(self, address, show_worker_logs: bool, emit):
        self.address, self.show_worker_logs, self.emit = address, show_worker_logs, emit
        self.made = None

    def make(self):
        if self.made is None:
            self.emit(StageStarted("connect"))
            self.made = connect_ray(self.address, show_worker_logs=self.show_worker_logs)
        return self.made


def run_study_pipeline(
    spec: PipelineSpec,
    *,
    address: RayAddress | None = None,
    on_event: EventHandler | None = None,
    show_worker_logs: bool = False,
    resume: bool = False,
    run_name: str | None = None,
    concurrent_trials: int | None = None,
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
    connection = _Connection(address, show_worker_logs, emit)
    data = prepare_data(spec, emit, before_stream=connection.make)
    if problem := metric_problem(spec.tune.metric, data.info.task):
        raise SpecError(f"tune.metric: {problem}")
    emit_cluster(connection.make(), emit)
    start_event_hub()
    tracker, tracking_uri = tracker_for(spec)
    study_dir, state = _open_study(spec, data, tracker, study_dir, state, run_name)
    parent_id = tracker.run_id
    emit(StageStarted("tune", mlflow_run_id=parent_id, study=state.study, resumed=resume))
    study_tracker = StudyTracker(tracker, spec.tune, state.study, spec.name, spec.train.profile)

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
                on_event=track, resume=resume, concurrent_trials=concurrent_trials,
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
        emit(StageStarted("log_model"))
        model_uri = _log_best(spec, best, best_sections, data, tracker)
        _mark(state, study_dir, "finished")
    return StudyRun(
        outcome=outcome,
        parent_run_id=parent_id,
        tracking_uri=tracking_uri,
        model_uri=model_uri,
        metrics=best.metrics,
        checkpoint=best.checkpoint,
        task=data.info.task,
        refit=best.refit,
        data=DataSummary.of(data),
        profile=_profile(spec, best.checkpoint),
    )


def _profile(spec: PipelineSpec, checkpoint: str | None) -> list[StepProfile]:
    """The step profiles of the logged model's training (train.profile), if it has them."""
    if spec.train.profile is None or not checkpoint:
        return []
    from jobs.trainer import read_profile

    return read_profile(checkpoint)[0]


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
    example = example_rows(data, 5)
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
    data: TrainingData,
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
        name = run_name or unique_name(f"{spec.name}-study")
        study_dir = study_root() / name
        tracker.start(name, tags=lineage_tags(spec, data, "tune") | {"orch.study": name})
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
    task: str = "classification"  # the data's (DataInfo.task)
    refit: RefitRun | None = None
    data: DataSummary | None = None
    profile: list[StepProfile] = field(default_factory=list)  # the logged model's training's


def _refit(
    spec: PipelineSpec,
    study: str,
    best_sections: dict,
    data: TrainingData,
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
    import ray

    cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
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
    emit(StageStarted("refit", mlflow_run_id=child.run_id, epochs=train.epochs))
    with child:
        try:
            result = fit(
                model,
                train,
                data,
                seed=spec.data.seed,
                run_name=name,
                storage_path=spec.train.storage_path or str(checkpoint_root()),
                on_event=run_events(child, emit),
            )
        except TrainingError as exc:
            flush_quietly(child)
            raise JobFailedError(f"{spec.name}: refit: {exc} (MLflow run {child.run_id})") from None
        child.flush()
        child.set_tags({"orch.checkpoint": result.checkpoint_path})
    parent.set_tags({"orch.refit_run_id": child.run_id})
    return RefitRun(result=result, mlflow_run_id=child.run_id)
