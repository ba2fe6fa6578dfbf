"""The study driver: a Ray Tune Tuner over ``tuning.trial.run_trial``, with live events.

A study lives in one directory: ``tune/`` is Ray Tune's experiment (restorable with
``Tuner.restore``), ``trials/`` holds each trial's Ray Train run and checkpoints, and
``orch_study.json`` records what a resume needs (the spec hash, the MLflow parent run).

Events (dicts with a "type") go to ``on_event`` from the driver's thread:
study_started, trial_started, trial_result, trial_finished, study_finished.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError
from ray.tune import Callback, Stopper

from jobs.data import TrainingData
from jobs.events import Event
from jobs.plugins import import_root
from jobs.spec import TrainSpec
from tuning import events
from tuning.errors import TuningError
from tuning.search import TIME_ATTR, create_scheduler, create_searcher
from tuning.space import apply_values, decode, param_space
from tuning.spec import TuneSpec, is_plugin_metric
from tuning.state_copy import StateCopy, put_back_if_cut_off
from tuning.summary import TrialSummary
from tuning.trial import CHECKPOINT_KEY, run_trial

STATE_FILE = "orch_study.json"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
# A multi-worker trial's own actor only relays events and reports; it takes no CPU so that
# its training workers, not its driver, decide how many trials fit on the cluster. A
# single-worker trial trains in its actor, which then holds the worker's resources.
TRIAL_DRIVER_MEMORY = 128 * 1024**2
# Ray Data lists a read's files in a task of one whole CPU (``TrialResources``).
LIST_FILES_CPU = 1.0
TRIAL_REPORT_KEYS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_rmse",
    "samples_per_s",
    "lr",
    "data_wait_fraction",
)


def trial_report(result: dict) -> dict:
    """What a trial's Tune result says of it: the trainer's keys and a model plugin's own
    metrics (``val_<name>``), without Ray's bookkeeping."""
    return {
        k: v
        for k, v in result.items()
        if k in TRIAL_REPORT_KEYS or (is_plugin_metric(k) and isinstance(v, int | float))
    }


EventHandler = Callable[[Event], None]


class StudyState(BaseModel):
    """``orch_study.json``: enough to resume a study with its MLflow parent run."""

    study: str
    pipeline: str
    spec_hash: str
    parent_run_id: str | None = None
    status: Literal["running", "finished", "failed"] = "running"
    started: float = Field(default_factory=time.time)

    @classmethod
    def read(cls, study_dir: Path) -> StudyState:
        return cls.model_validate_json((study_dir / STATE_FILE).read_text())

    def write(self, study_dir: Path) -> None:
        study_dir.mkdir(parents=True, exist_ok=True)
        tmp = study_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(study_dir / STATE_FILE)


def sets_resources(path: str) -> bool:
    """True when a space ``path`` can change what a trial holds: the whole train section,
    its workers, or its resources per worker (all of them or one)."""
    return path in ("train", "train.workers", "train.resources_per_worker") or path.startswith(
        "train.resources_per_worker."
    )


def trial_trains(tune: TuneSpec, sections: dict) -> list[TrainSpec]:
    """The train sections a trial may run with, as far as its resources go: every
    combination of the candidate values (``Distribution.candidate_values``: each choice, both
    ends of a range) of the space's paths that ``sets_resources``. Combinations that do not
    validate are left out (such a trial fails before it holds anything); when none does,
    the spec's own train section."""
    candidates = [{}]
    for path, dist in tune.space.items():
        if sets_resources(path):
            candidates = [{**c, path: v} for c in candidates for v in dist.candidate_values()]
    trains = []
    for values in candidates:
        try:
            trains.append(TrainSpec.model_validate(apply_values(sections, values)["train"]))
        except ValidationError:
            continue
    return trains or [TrainSpec.model_validate(sections["train"])]


def trial_demand(tune: TuneSpec, sections: dict) -> dict[str, float]:
    """The most any trial of the space asks of the cluster (workers x resources). A
    local-runner trial on data Ray Data may stream holds at least ``LIST_FILES_CPU``
    (``TrialResources``): whether it streams is known only once the source is read."""
    may_stream = may_stream_through_ray_data(sections.get("data") or {})
    demand: dict[str, float] = {}
    for train in trial_trains(tune, sections):
        for name, amount in train.resources_per_worker.items():
            total = amount * train.workers
            if name == "CPU" and may_stream and train.resolved_runner == "local":
                total = max(total, LIST_FILES_CPU)
            demand[name] = max(demand.get(name, 0.0), total)
    return demand


def may_stream_through_ray_data(data: dict) -> bool:
    """Whether a ``data`` section may be streamed by Ray Data's tasks (which need CPU of
    their own): an image folder unless ``streaming: false``, a bundled set with
    ``streaming: true``. Files streamed are read by the ranks themselves
    (``jobs.rank_reader``), in the CPU they hold."""
    streaming = data.get("streaming", "auto")
    if data.get("image_size") is not None:
        return streaming is not False
    return str(data.get("source", "")).startswith("sklearn://") and streaming is True


def trial_runner(sections: dict, values: dict) -> str | None:
    """Which runner a trial of these values uses (None: the values make an invalid spec)."""
    try:
        return TrainSpec.model_validate(apply_values(sections, values)["train"]).resolved_runner
    except ValidationError:
        return None


class TrialResources:
    """What one trial's actor reserves, from its config (a callable for ``with_resources``).

    Local-runner trials train in the actor: it holds ``resources_per_worker``. Ray Train
    trials reserve their workers themselves; the actor only needs a little memory. On
    streamed data a local-runner trial's CPU is a second bundle of its placement group,
    which the actor and its Ray Data tasks share (``jobs.streaming`` sends Data's tasks
    into the group): each trial's reading is capped at its own share, and no trial's
    reading waits on CPU the other trials hold. That bundle is at least one CPU, because
    Ray Data lists the files of every read in a task of one whole CPU
    (``ray/data/_internal/planner/plan_list_files_op.py``, Ray 2.60: no ``num_cpus``);
    the actor's own bundle keeps the rest of its resources (a GPU, memory), or is empty.
    """

    def __init__(self, sections: dict, tune: TuneSpec, data_cpus: float = 0.0):
        self.sections = sections
        self.tune = tune
        self.data_cpus = data_cpus

    def __call__(self, config: dict):
        from ray.tune import PlacementGroupFactory

        values = decode(self.tune, config)
        if trial_runner(self.sections, values) == "local":
            train = TrainSpec.model_validate(apply_values(self.sections, values)["train"])
            resources = dict(train.resources_per_worker)
            if not self.data_cpus:
                return PlacementGroupFactory([resources])
            cpu = max(resources.pop("CPU", 1.0), LIST_FILES_CPU)
            return PlacementGroupFactory([resources, {"CPU": cpu}])
        return PlacementGroupFactory([{"memory": TRIAL_DRIVER_MEMORY}])


def _data_cpus(data: TrainingData) -> float:
    """CPU per trial for the Ray Data tasks of a source Ray Data streams
    (``data.cpus_per_worker``)."""
    from jobs.rank_reader import reads_by_rank

    if data.info.reading != "streamed" or reads_by_rank(data):
        return 0.0  # in memory, or files the trial reads in its own process
    return data.spec.cpus_per_worker


def concurrency_cap(demand: dict[str, float], cluster: dict[str, float]) -> int:
    """How many trials of ``demand`` fit the cluster at once (0: not even one)."""
    fits = [math.floor(cluster.get(name, 0.0) / amount + 1e-9) for name, amount in demand.items()]
    return min(fits) if fits else 1


def trials_at_once(tune: TuneSpec, demand: dict[str, float], cluster: dict[str, float]) -> int:
    """The one rule for a study's concurrency (a plan, the queue's admission and a study
    without a plan all use it): what the cluster fits, capped by ``max_concurrent_trials``
    and by the trials planned. 0 when not even one trial fits."""
    cap = concurrency_cap(demand, cluster)
    return min(cap, tune.max_concurrent_trials or cap, tune.planned_trials())


class _StudyCallback(Callback, Stopper):
    """Turns Tune's hooks into study events; also stops the study after too many failures.

    Pickled into Tune's experiment state: it keeps only the study name and counters, and
    finds the live event handler through ``tuning.events``.
    """

    def __init__(
        self, study: str, max_failed_trials: int | None, state_copy: StateCopy | None = None
    ):
        self.study = study
        self.max_failed_trials = max_failed_trials
        self.failed: set[str] = set()
        self.state_copy = state_copy

    def on_step_end(self, iteration, trials, **info):
        if self.state_copy is not None:
            self.state_copy.refresh()  # Tune's loop is between writes here

    def on_trial_start(self, iteration, trials, trial, **info):
        events.emit(self.study, events.HookStarted(trial.trial_id, dict(trial.config)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = trial_report(result)
        events.emit(
            self.study,
            events.HookResult(
                trial.trial_id,
                dict(trial.config),
                metrics,
                checkpoint=result.get(CHECKPOINT_KEY),
                pid=result.get("pid"),
            ),
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        events.emit(self.study, events.HookComplete(trial.trial_id, dict(trial.config)))

    # Tune saves a callback's state with the experiment: failures count across a resume.
    def get_state(self) -> dict:
        return {"failed": sorted(self.failed)}

    def set_state(self, state: dict) -> None:
        self.failed = set(state.get("failed", []))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed.add(trial.trial_id)
        events.emit(
            self.study, events.HookError(trial.trial_id, dict(trial.config), _error_line(trial))
        )

    # Stopper
    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.max_failed_trials is not None and len(self.failed) >= self.max_failed_trials


def _error_line(trial) -> str:
    """The root cause of a trial's failure, as one line.

    Tune writes the error into the trial's local directory before it calls the callbacks;
    the copy in the experiment's storage may not be synced yet, so read the local one.
    """
    text = ""
    for path in (trial.pickled_error_file, trial.error_file):
        if not path or not os.path.exists(path):
            continue
        if path == trial.pickled_error_file:
            import ray.cloudpickle as cloudpickle

            try:
                with open(path, "rb") as f:
                    error = cloudpickle.load(f)
            except Exception:  # an error that does not unpickle here: use the text file
                continue
            text = str(getattr(error, "cause", None) or error)
        else:
            text = Path(path).read_text()
        break
    return root_cause_line(text) or "the trial failed (no error recorded)"


_PREFIX = re.compile(r"^(?:[\w.]+(?:Error|Exception)|training failed): ")


def root_cause_line(text: str) -> str:
    """'x.TrainingError: training failed: TrainingError: diverged ...' -> 'diverged ...'."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    while (match := _PREFIX.match(line)) is not None:
        line = line[match.end() :]
    return line


class _Tracker:
    """Driver-side bookkeeping of trials; turns raw hook events into the study's events."""

    def __init__(
        self,
        tune: TuneSpec,
        sections: dict,
        epochs: int,
        on_event: EventHandler,
        started: float,
        budget_s: float | None,
    ):
        self.tune = tune
        self.sections = sections
        self.epochs = epochs
        self.on_event = on_event
        self.trials: dict[str, TrialSummary] = {}
        self.stop_reasons: dict[str, str] = {}
        self.started = started
        self.budget_s = budget_s

    def _trial(self, event: events.TuneHook) -> TrialSummary:
        trial = self.trials.get(event.trial_id)
        if trial is None:
            params = decode(self.tune, getattr(event, "config", {}))
            trial = TrialSummary(
                trial_id=event.trial_id,
                params=params,
                runner=trial_runner(self.sections, params),
            )
            self.trials[trial.trial_id] = trial
        return trial

    def _better(self, a: float, b: float | None) -> bool:
        if b is None or math.isnan(b):
            return True
        return a > b if self.tune.resolved_mode == "max" else a < b

    def best(self) -> TrialSummary | None:
        done = [t for t in self.trials.values() if t.status == "completed" and t.metric is not None]
        best = None
        for trial in done:
            if best is None or self._better(trial.metric, best.metric):
                best = trial
        return best

    def best_so_far(self) -> float | None:
        values = [t.best_metric for t in self.trials.values() if t.best_metric is not None]
        if not values:
            return None
        return max(values) if self.tune.resolved_mode == "max" else min(values)

    def __call__(self, event: events.TuneHook) -> None:
        if isinstance(event, events.StopDecision):
            self.stop_reasons[event.trial_id] = event.reason
            return
        trial = self._trial(event)
        if isinstance(event, events.HookStarted):
            trial.status = "running"
            self.on_event(events.TrialStarted(trial.model_copy()))
        elif isinstance(event, events.HookResult):
            self._record(trial, event)
            self.on_event(events.TrialResult(trial.model_copy(), self.best_so_far()))
        elif isinstance(event, events.HookComplete):
            if trial.checkpoint and trial.epoch >= self.epochs:
                trial.status = "completed"
            else:
                trial.status = "stopped"
                trial.reason = self.stop_reasons.get(trial.trial_id) or self._study_stop_reason()
            self.on_event(events.TrialFinished(trial.model_copy(), self.best_so_far()))
        elif isinstance(event, events.HookError):
            trial.status = "failed"
            trial.reason = event.error
            self.on_event(events.TrialFinished(trial.model_copy(), self.best_so_far()))

    def _record(self, trial: TrialSummary, event: events.HookResult) -> None:
        metrics = {k: float(v) for k, v in event.metrics.items()}
        trial.status = "running"
        trial.epoch = int(metrics.get(TIME_ATTR, trial.epoch))
        trial.metrics = metrics
        value = metrics.get(self.tune.metric)
        if value is not None:
            trial.metric = value
            if self._better(value, trial.best_metric):
                trial.best_metric = value
        if event.checkpoint:
            trial.checkpoint = event.checkpoint
        if event.pid:
            trial.pid = int(event.pid)

    def close_unfinished(self) -> None:
        """Trials the study itself stopped (time budget, failures) get no hook: end them."""
        for trial in self.trials.values():
            if trial.status in ("pending", "running"):
                trial.status = "stopped"
                trial.reason = self._study_stop_reason()
                self.on_event(events.TrialFinished(trial.model_copy(), self.best_so_far()))

    def _study_stop_reason(self) -> str:
        if self.budget_s is not None and time.time() - self.started >= self.budget_s * 0.99:
            return f"the study's time_budget_s ({self.budget_s:g} s) ran out"
        failed = sum(t.status == "failed" for t in self.trials.values())
        if self.tune.max_failed_trials is not None and failed >= self.tune.max_failed_trials:
            return f"the study stopped after {failed} failed trials (tune.max_failed_trials)"
        return "stopped by Ray Tune before its last epoch"


class StudyOutcome(BaseModel):
    """What a finished study leaves (the pipeline adds MLflow and the best model)."""

    study: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    path: str
    wall_s: float


def run_study(
    *,
    study: str,
    study_dir: Path,
    sections: dict,
    tune: TuneSpec,
    data: TrainingData,
    seed: int,
    trials_storage: str | None = None,
    on_event: EventHandler | None = None,
    resume: bool = False,
    concurrent_trials: int | None = None,
) -> StudyOutcome:
    """Run (or, with ``resume``, continue) a study on the connected Ray cluster.

    Args:
        study: the study's name (also the key of its event handler).
        study_dir: its directory (see the module doc).
        sections: the pipeline's ``model`` and ``train`` sections as dicts.
        tune: the tune section.
        data: the prepared data, shared by every trial through the object store.
        seed: the data seed (trials train with it, as a single run would).
        trials_storage: where trials keep their Ray Train checkpoints (a path every node
            can reach on a multi-node cluster); None = ``study_dir/trials``.
        concurrent_trials: trials at once as a plan fixed them (the queue admitted the
            job for that many); None = ``trials_at_once`` on the cluster now.

    Raises:
        TuningError: the cluster cannot fit one trial, or the study cannot be restored.
    """
    from ray import tune as ray_tune

    emit = on_event or (lambda event: None)
    epochs = TrainSpec.model_validate(sections["train"]).epochs
    demand = trial_demand(tune, sections)
    concurrent = concurrent_trials or _concurrency(tune, demand)
    _set_tune_environment()
    started = time.time()
    tracker = _Tracker(tune, sections, epochs, emit, started, tune.time_budget_s)
    events.register(study, tracker)
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(
            run_trial, sections=sections, tune_spec=tune, data=data, seed=seed,
            storage_path=trials_storage or str(study_dir / TRIALS_DIR),
            import_root=import_root(sections["model"]["type"]),
        ),
        TrialResources(sections, tune, data_cpus=_data_cpus(data)),
    )  # fmt: skip
    try:
        if resume:
            tuner = _restored_tuner(study_dir / TUNE_DIR, trainable, tune)
        else:
            tuner = _new_tuner(study, study_dir, trainable, tune, epochs, concurrent)
        emit(
            events.StudyStarted(
                study=study, planned_trials=tune.planned_trials(),
                max_concurrent_trials=concurrent, trial_resources=demand, metric=tune.metric,
                mode=tune.resolved_mode, resumed=resume, path=str(study_dir),
            )
        )  # fmt: skip
        grid = tuner.fit()
        tracker.close_unfinished()
        _backfill(tracker, grid, tune, resume)
    finally:
        events.unregister(study)
    outcome = StudyOutcome(
        study=study,
        trials=sorted(tracker.trials.values(), key=lambda t: t.trial_id),
        best=tracker.best(),
        path=str(study_dir),
        wall_s=time.time() - started,
    )
    emit(events.StudyFinished(outcome))
    return outcome


def _concurrency(tune: TuneSpec, demand: dict) -> int:
    """Trials at once: what the cluster fits, capped by the spec and the trial budget.

    Raises:
        TuningError: the cluster cannot fit one trial.
    """
    import ray

    cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
    concurrent = trials_at_once(tune, demand, cluster)
    if concurrent < 1:
        raise TuningError(
            f"one trial needs {demand} (train.workers x train.resources_per_worker) but the "
            f"cluster has { ({k: cluster.get(k, 0.0) for k in demand}) }; lower train.workers or "
            "the resources per worker, or add nodes"
        )
    return concurrent


def _set_tune_environment() -> None:
    """Ray Tune settings, read from the environment (a value the user set wins)."""
    # Tune's experiment snapshot (what a restore sees) on every step of its loop, so a
    # trial that finished just before the driver died is not run again (with a 1 s
    # throttle a trial finished in that second was re-run after a kill in a test).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Our own table replaces Tune's console output.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C interrupts the study (resumable with --resume) instead of Tune's handler
    # quietly ending it as if it had finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def _restored_tuner(tune_path: Path, trainable, tune: TuneSpec):
    """The study's Tuner from its saved state (a cut-off copy put back first).

    Raises:
        TuningError: there is no whole state to resume from.
    """
    from ray import tune as ray_tune

    try:
        put_back_if_cut_off(tune_path)
    except ValueError as exc:
        raise TuningError(str(exc)) from None
    if not ray_tune.Tuner.can_restore(str(tune_path)):
        raise TuningError(f"{tune_path}: no Ray Tune state to resume from")
    return ray_tune.Tuner.restore(
        str(tune_path),
        trainable,
        resume_unfinished=True,
        resume_errored=False,
        param_space=param_space(tune),
    )


def _new_tuner(
    study: str, study_dir: Path, trainable, tune: TuneSpec, epochs: int, concurrent: int
):
    from ray import tune as ray_tune

    tune_path = study_dir / TUNE_DIR
    callback = _StudyCallback(study, tune.max_failed_trials, StateCopy(str(tune_path)))
    return ray_tune.Tuner(
        trainable,
        param_space=param_space(tune),
        tune_config=ray_tune.TuneConfig(
            metric=tune.metric,
            mode=tune.resolved_mode,
            search_alg=create_searcher(tune, concurrent),
            scheduler=create_scheduler(tune, epochs, study),
            num_samples=1 if tune.search.algorithm == "grid" else tune.num_samples,
            max_concurrent_trials=concurrent,
            time_budget_s=tune.time_budget_s,
            # the next trial runs in the actor (and process) the last one left: no actor
            # start, DeepSpeed and torch already imported; the trial resets all it owns
            # (seed, model, engine, data order)
            reuse_actors=True,
        ),
        run_config=ray_tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(study_dir),
            callbacks=[callback],
            stop=callback,
            failure_config=ray_tune.FailureConfig(max_failures=tune.trial_retries),
            verbose=0,
        ),
    )


def _backfill(tracker: _Tracker, grid, tune: TuneSpec, resumed: bool) -> None:
    """Trials that finished before a restore never fire hooks in this driver: add them."""
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        if not trial_id or trial_id in tracker.trials:
            continue
        config = metrics.get("config", {})
        params = decode(tune, config)
        summary = TrialSummary(
            trial_id=trial_id, params=params, runner=trial_runner(tracker.sections, params)
        )
        summary.epoch = int(metrics.get(TIME_ATTR, 0))
        summary.metrics = {k: float(v) for k, v in trial_report(metrics).items()}
        summary.metric = summary.metrics.get(tune.metric)
        summary.best_metric = summary.metric
        summary.checkpoint = metrics.get(CHECKPOINT_KEY)
        if result.error is not None:
            summary.status, summary.reason = "failed", root_cause_line(str(result.error))
        elif summary.checkpoint and summary.epoch >= tracker.epochs:
            summary.status = "completed"
        else:
            summary.status = "stopped"
            summary.reason = (
                "stopped before the study was resumed" if resumed else tracker._study_stop_reason()
            )
        tracker.trials[trial_id] = summary


def studies(root: Path, pipeline: str) -> list[tuple[Path, StudyState]]:
    """A pipeline's studies under ``root`` with their states, oldest first."""
    found = []
    for state_file in root.glob(f"*/{STATE_FILE}"):
        try:
            state = StudyState.read(state_file.parent)
        except (OSError, ValueError):  # unreadable or not ours: not a study to resume
            continue
        if state.pipeline == pipeline:
            found.append((state_file.parent, state))
    return sorted(found, key=lambda item: item[1].started)
