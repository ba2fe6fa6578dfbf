"""A study in MLflow: one parent run, a child run per trial, the summary as artifacts.

Everything is logged from the driver, from the study's events, so concurrent trials never
race on one run and nothing depends on trials reaching the tracking server themselves.
The events are mirrored by one background thread, in order: Tune calls its callbacks on
its own loop, and a child run's MLflow calls (create, params, metrics, tags, end) took
about a quarter of a second per trial there, which the next trial waited for.
Child runs carry ``orch.trial_id``; a resumed study finds them by it and goes on logging
into the same runs.

Trial status in MLflow: completed -> FINISHED, stopped early -> KILLED (tags
``orch.trial_status=stopped_early``, ``orch.stop_epoch``, ``orch.stop_reason``),
failed -> FAILED (``orch.error``).
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
from pathlib import Path

from jobs.profiling import PROFILE_DIR
from jobs.spec import ProfileSpec
from jobs.tracking import RunTracker
from tuning.events import StudyEvent, TrialFinished, TrialResult, TrialStarted
from tuning.report import plot_history, plot_params, write_table
from tuning.spec import TuneSpec

logger = logging.getLogger(__name__)
_MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_TAG_STATUS = {"completed": "completed", "stopped": "stopped_early", "failed": "failed"}


class StudyTracker:
    """An ``on_event`` handler that mirrors a study into MLflow under ``parent``."""

    def __init__(
        self,
        parent: RunTracker,
        tune: TuneSpec,
        study: str,
        run_name_prefix: str,
        profile: ProfileSpec | None = None,
    ):
        self.parent = parent
        self.profiled = profile is not None  # train.profile: trials' checkpoints hold profiles
        self.tune = tune
        self.study = study
        self.prefix = run_name_prefix
        self.children: dict[str, RunTracker] = {}
        self.finish_order: list[str] = []
        self._pending: queue.Queue = queue.Queue()
        threading.Thread(target=self._drain, name="orch-study-mlflow", daemon=True).start()

    def _child(self, trial) -> RunTracker:
        child = self.children.get(trial.trial_id)
        if child is not None:
            return child
        child = self.parent.child()
        existing = child.find_runs({"orch.study": self.study, "orch.trial_id": trial.trial_id})
        if existing:
            child.reopen(existing[0])
        else:
            child.start(
                f"{self.prefix}-{trial.trial_id}",
                tags={
                    "orch.study": self.study,
                    "orch.trial_id": trial.trial_id,
                    "orch.stage": "trial",
                    "orch.trial_status": "running",
                    "orch.runner": trial.runner or "",
                },
                parent_run_id=self.parent.run_id,
            )
            child.log_params({k: _param(v) for k, v in trial.params.items()})
        self.children[trial.trial_id] = child
        return child

    def __call__(self, event: StudyEvent) -> None:
        """Queue one event for mirroring (the events carry snapshots of their trials)."""
        self._pending.put(event)

    def _drain(self) -> None:
        while True:
            event = self._pending.get()
            try:
                self._mirror(event)
            except Exception as exc:  # MLflow client errors are many types; the study goes on
                logger.warning("MLflow logging of %s failed: %s", event.kind, exc)
            finally:
                self._pending.task_done()

    def wait(self) -> None:
        """Until every event so far is mirrored (or failed with a warning)."""
        self._pending.join()

    def _mirror(self, event: StudyEvent) -> None:
        if not isinstance(event, TrialStarted | TrialResult | TrialFinished):
            return
        trial = event.trial
        child = self._child(trial)
        if isinstance(event, TrialResult) and trial.metrics:
            child.log_metrics(trial.metrics, step=trial.epoch)
        elif isinstance(event, TrialFinished):
            tags = {"orch.trial_status": _TAG_STATUS[trial.status], "orch.epochs": str(trial.epoch)}
            if trial.status == "stopped":
                tags |= {
                    "orch.stop_epoch": str(trial.epoch),
                    "orch.stop_reason": trial.reason or "",
                }
            elif trial.status == "failed":
                tags["orch.error"] = (trial.reason or "")[:5000]
            elif trial.checkpoint:
                tags["orch.checkpoint"] = trial.checkpoint
            if trial.checkpoint and self.profiled:
                _log_profile(child, trial.checkpoint)
            child.set_tags(tags)
            child.end(_MLFLOW_STATUS[trial.status])
            self.finish_order.append(trial.trial_id)

    def _still_running(self, child: RunTracker) -> bool:
        try:
            return self.parent.client.get_run(child.run_id).info.status == "RUNNING"
        except Exception:  # unreachable server: nothing to repair now
            return False

    def finish(self, trials: list, best) -> None:
        """Tag the best trial; log the trials table and plots on the parent run."""
        self.wait()
        for trial in trials:
            child = self.children.get(trial.trial_id)
            if child is not None and trial.status in _MLFLOW_STATUS and self._still_running(child):
                # the server missed the trial's end (or Tune never announced it): end it now
                self._mirror(TrialFinished(trial))
                self.finish_order.pop()
            if child is None:  # finished before a resume; its run is already complete
                found = self.parent.find_runs(
                    {"orch.study": self.study, "orch.trial_id": trial.trial_id}
                )
                trial.mlflow_run_id = found[0] if found else None
            else:
                trial.mlflow_run_id = child.run_id
        if best is not None and best.mlflow_run_id:
            self.parent.client.set_tag(best.mlflow_run_id, "orch.best", "true")
            self.parent.set_tags(
                {
                    "orch.best_trial_id": best.trial_id,
                    "orch.best_run_id": best.mlflow_run_id,
                    "orch.best_params": str(best.params),
                }
            )
            self.parent.log_metrics({f"best_{self.tune.metric}": best.metric}, step=0)
        counts = {s: sum(t.status == s for t in trials) for s in ("completed", "stopped", "failed")}
        self.parent.log_metrics(
            {
                "trials_completed": counts["completed"],
                "trials_stopped_early": counts["stopped"],
                "trials_failed": counts["failed"],
                "epochs_consumed": sum(t.epoch for t in trials),
            },
            step=0,
        )
        order = {tid: i for i, tid in enumerate(self.finish_order)}
        ordered = sorted(trials, key=lambda t: (order.get(t.trial_id, -1), t.trial_id))
        with tempfile.TemporaryDirectory(prefix="orch-study-") as tmp:
            out = Path(tmp)
            self.parent.log_artifact(str(write_table(ordered, self.tune, out / "trials.parquet")))
            self.parent.log_artifact(
                str(plot_history(ordered, self.tune, out / "optimization_history.png")), "plots"
            )
            self.parent.log_artifact(
                str(plot_params(ordered, self.tune, out / "metric_vs_params.png")), "plots"
            )


def _log_profile(child: RunTracker, checkpoint: str) -> None:
    """A trial's ``train.profile`` files (if its steps ran) into its child run's profile/."""
    from jobs.trainer import read_profile

    _, folder = read_profile(checkpoint)
    if folder is not None:
        child.log_artifacts(folder, PROFILE_DIR)


def _param(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)
