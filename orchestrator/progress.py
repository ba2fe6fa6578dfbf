"""What `orch run` shows while it works: the stage, an epoch bar with live metrics."""

from __future__ import annotations

import json

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs.events import EpochEnded, TrainingEvent, TrainingWarning, WorkerStarted
from orchestrator.events import ClusterFound, StageStarted
from tuning.events import StudyEvent, StudyFinished, StudyStarted, TrialFinished

_STAGES = {
    "data": "Reading and splitting data",
    "connect": "Connecting to Ray",
    "train": "Training",
    "tune": "Tuning",
    "refit": "Training the best configuration again (tune.refit)",
    "log_model": "Logging the model to MLflow",
    "register": "Registering the model",
    "serve": "Serving on Ray Serve",
    "quantize": "Quantizing and measuring",
}
_STATE_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "stopped": "yellow",
    "failed": "red",
}


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def format_params(params: dict) -> str:
    return "  ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in params.items())


def format_metrics(metrics: dict) -> str:
    keys = ("train_loss", "val_loss", "val_accuracy", "val_rmse", "samples_per_s")
    return "  ".join(
        f"{k}={metrics[k]:.4g}" if k != "samples_per_s" else f"{metrics[k]:.0f} samples/s"
        for k in keys
        if k in metrics
    )


class RunDisplay:
    """An ``on_event`` handler that renders events with rich (on stderr)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.study: StudyTable | None = None

    def __call__(self, event) -> None:
        if isinstance(event, TrainingEvent):
            self._training(event)
            return
        if isinstance(event, StageStarted):
            self._stage(event)
        elif isinstance(event, StudyStarted):
            self.study = StudyTable(self.console, event)
        elif isinstance(event, StudyEvent) and self.study is not None:
            self.study(event)
            if isinstance(event, StudyFinished):
                self.study = None
        elif isinstance(event, ClusterFound) and event.dashboard_url:
            token = event.token_path
            self.console.print(
                f"  Ray dashboard {event.dashboard_url}" + (f" (token: {token})" if token else ""),
                soft_wrap=True,
            )

    def _training(self, event: TrainingEvent) -> None:
        if isinstance(event, WorkerStarted) and event.rank == 0 and event.resumed_from_epoch:
            self.console.print(
                f"[yellow]workers restarted: resuming from the checkpoint of epoch "
                f"{event.resumed_from_epoch}[/]"
            )
        elif isinstance(event, TrainingWarning):
            self.console.print(f"[yellow]warning: {event.message}[/]")
        elif isinstance(event, EpochEnded) and self.progress is not None:
            self.progress.update(
                self.task,
                completed=event.metrics["epoch"],
                metrics=format_metrics(event.metrics),
            )

    def _stage(self, event: StageStarted) -> None:
        stage = event.stage
        self.close()  # the last stage's progress bar or study table
        self.console.print(f"[bold cyan]>[/] {_STAGES.get(stage, stage)}")
        if stage == "tune":
            resumed = " (resumed)" if event.resumed else ""
            self.console.print(f"  study {event.study}{resumed}, MLflow run {event.mlflow_run_id}")
        if stage in ("train", "refit"):
            self.console.print(f"  MLflow run {event.mlflow_run_id}")
            self.progress = Progress(
                TextColumn("  epoch"),
                MofNCompleteColumn(),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
                # rich would put a proxy in sys.stdout/sys.stderr that writes to the terminal,
                # and Ray's threads print to sys.stdout: that output belongs in the log file
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.task = self.progress.add_task("train", total=event.epochs, metrics="")
            self.progress.start()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.study is not None:
            self.study.close()
            self.study = None


class StudyTable:
    """A live table of a study's trials: state, epoch, metric, best so far, params."""

    def __init__(self, console: Console, started: StudyStarted):
        self.console = console
        self.metric = started.metric
        self.planned = started.planned_trials
        self.mode = started.mode
        self.trials: dict = {}
        self.best_so_far = None
        console.print(
            f"  {self.planned} trials, up to {started.max_concurrent_trials} at once, each "
            f"using {format_params(started.trial_resources) or 'no resources'}; "
            f"{self.mode} {self.metric}"
        )
        self.live = Live(
            self._render(),
            console=console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,  # as for the epoch bar: Ray's prints go to the log file
            redirect_stderr=False,
        )
        self.live.start()

    def __call__(self, event: StudyEvent) -> None:
        if isinstance(event, StudyFinished):
            self.close()
            return
        trial = event.trial
        self.trials[trial.trial_id] = trial
        if getattr(event, "best_so_far", None) is not None:
            self.best_so_far = event.best_so_far
        if isinstance(event, TrialFinished) and trial.status in ("stopped", "failed"):
            self.console.print(
                f"  [{_STATE_STYLE[trial.status]}]trial {trial.trial_id} {trial.status} at "
                f"epoch {trial.epoch}: {escape(trial.reason or '')}[/]"
            )
        self.live.update(self._render())

    def _render(self) -> Table:
        done = sum(t.status in ("completed", "stopped", "failed") for t in self.trials.values())
        best = "-" if self.best_so_far is None else f"{self.best_so_far:.4g}"
        table = Table(
            title=f"trials {done}/{self.planned} done, best {self.metric} so far: {best}",
            title_justify="left",
            box=None,
            padding=(0, 1),
        )
        for column in ("trial", "state", "epoch", self.metric, "best", "params"):
            table.add_column(column, no_wrap=column != "params")
        for trial in self.trials.values():
            style = _STATE_STYLE.get(trial.status, "")
            table.add_row(
                trial.trial_id,
                f"[{style}]{trial.status}[/]",
                str(trial.epoch),
                "-" if trial.metric is None else f"{trial.metric:.4g}",
                "-" if trial.best_metric is None else f"{trial.best_metric:.4g}",
                format_params(trial.params),
            )
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None
