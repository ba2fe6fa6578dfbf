"""A finished study as files: a Parquet table of all trials and PNG plots.

The table has one row per trial (id, status, epochs, the study metric, its best value, the
reason a trial stopped or failed, its MLflow run) and one column per searched path, so it
can be read back with pandas or pyarrow and compared across studies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tuning.spec import TuneSpec


def trials_table(trials: list, tune: TuneSpec) -> pa.Table:
    rows = {
        "trial_id": [t.trial_id for t in trials],
        "status": [t.status for t in trials],
        "epochs": [t.epoch for t in trials],
        tune.metric: [t.metric for t in trials],
        f"best_{tune.metric}": [t.best_metric for t in trials],
        "reason": [t.reason for t in trials],
        "mlflow_run_id": [t.mlflow_run_id for t in trials],
    }
    for path in tune.space:
        raw = [t.params.get(path) for t in trials]
        if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in raw):
            column = pa.array([None if v is None else float(v) for v in raw], pa.float64())
        else:  # lists, strings, mixtures: JSON text
            column = pa.array([None if v is None else json.dumps(v) for v in raw], pa.string())
        rows[f"param:{path}"] = column
    return pa.table(rows)


def write_table(trials: list, tune: TuneSpec, path: Path) -> Path:
    pq.write_table(trials_table(trials, tune), path)
    return path


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (drivers have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(ordered: list, tune: TuneSpec, path: Path) -> Path:
    """Each trial's final metric in the order trials finished, with the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"completed": "tab:blue", "stopped": "tab:orange", "failed": "tab:red"}
    best, best_line = None, []
    for i, trial in enumerate(ordered, start=1):
        value = trial.metric
        if _finite(value):
            ax.scatter(i, value, color=colors.get(trial.status, "gray"), s=25, zorder=3)
            if trial.status == "completed" and (
                best is None or (value > best if tune.resolved_mode == "max" else value < best)
            ):
                best = value
        best_line.append(best if best is not None else math.nan)
    ax.step(range(1, len(ordered) + 1), best_line, where="post", color="black", label="best")
    for status, color in colors.items():
        ax.scatter([], [], color=color, label=status)
    ax.set_xlabel("trial (in the order trials finished)")
    ax.set_ylabel(tune.metric)
    ax.set_title(f"Optimisation history ({tune.search.algorithm}, {tune.early_stopping.type})")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_params(trials: list, tune: TuneSpec, path: Path) -> Path:
    """The metric against each searched parameter, one panel each."""
    plt = _pyplot()
    paths = list(tune.space)
    cols = min(3, len(paths))
    rows = math.ceil(len(paths) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    shown = [t for t in trials if _finite(t.metric)]
    for ax, name in zip(axes.flat, paths, strict=False):
        dist = tune.space[name]
        points = [(t.params.get(name), t.metric, t.status) for t in shown if name in t.params]
        if dist.kind == "choice":
            labels = [json.dumps(v) for v in dist.choice]
            xs = [labels.index(json.dumps(v)) for v, _, _ in points]
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        else:
            xs = [v for v, _, _ in points]
            if dist.kind in ("loguniform", "logint", "qlogint"):
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        colors = ["tab:blue" if s == "completed" else "tab:orange" for _, _, s in points]
        ax.scatter(xs, [m for _, m, _ in points], c=colors, s=20)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(tune.metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(paths) :]:
        ax.set_visible(False)
    fig.suptitle(f"{tune.metric} against each hyperparameter (orange: stopped early)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
