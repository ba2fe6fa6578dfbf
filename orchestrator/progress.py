"""What `orch run` shows while it works: the stage, an epoch bar with live metrics."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_STAGES = {
    "data": "Reading and splitting data",
    "connect": "Connecting to Ray",
    "train": "Training",
    "log_model": "Logging the model to MLflow",
}


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

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "stage":
            self._stage(event)
        elif kind == "worker_started" and event["rank"] == 0 and event["resumed_from_epoch"]:
            self.console.print(
                f"[yellow]workers restarted: resuming from the checkpoint of epoch "
                f"{event['resumed_from_epoch']}[/]"
            )
        elif kind == "warning":
            self.console.print(f"[yellow]warning: {event['message']}[/]")
        elif kind == "epoch" and self.progress is not None:
            metrics = event["metrics"]
            self.progress.update(
                self.task, completed=metrics["epoch"], metrics=format_metrics(metrics)
            )

    def _stage(self, event: dict) -> None:
        stage = event["stage"]
        if stage != "train":
            self.close()
        self.console.print(f"[bold cyan]>[/] {_STAGES.get(stage, stage)}")
        if stage == "train":
            self.console.print(f"  MLflow run {event['mlflow_run_id']}")
            self.progress = Progress(
                TextColumn("  epoch"),
                MofNCompleteColumn(),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
            )
            self.task = self.progress.add_task("train", total=event["epochs"], metrics="")
            self.progress.start()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
