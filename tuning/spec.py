"""The ``tune`` section of a pipeline spec: what to search, how, and when to stop trials.

Paths in ``space`` are dotted paths into the rest of the spec (``train.optimizer.lr``);
whether each path exists and takes the values given is checked against the whole pipeline
spec by ``tuning.space.check_space`` (the pipeline spec calls it), before anything runs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.spec import TrainSpec

# What the trainer reports every epoch, and which way is better for each.
TRAINER_METRICS = {
    "val_accuracy": "max",
    "val_loss": "min",
    "val_rmse": "min",
    "train_loss": "min",
    "samples_per_s": "max",
}
CLASSIFICATION_ONLY = {"val_accuracy"}
REGRESSION_ONLY = {"val_rmse"}
# A model plugin's own metric (jobs.plugins.PluginMetric): its name passes here, and the
# pipeline spec checks that its model reports it (orchestrator.spec.plugin_metric_problem).
PLUGIN_METRIC = re.compile(r"val_[a-z][a-z0-9_]{0,62}")


def is_plugin_metric(metric: str) -> bool:
    return metric not in TRAINER_METRICS and PLUGIN_METRIC.fullmatch(metric) is not None


def metric_problem(metric: str, task: str) -> str | None:
    """Why ``metric`` is not reported for a ``task`` (classification | regression), if not."""
    missing = CLASSIFICATION_ONLY if task == "regression" else REGRESSION_ONLY
    if metric in missing:
        usable = [m for m in TRAINER_METRICS if m not in missing]
        return f"{metric} is not reported for {task}; use one of {', '.join(usable)}"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Distribution(_Section):
    """One dimension of the search space: exactly one of these keys."""

    uniform: tuple[float, float] | None = Field(None, description="[low, high], uniform.")
    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high], uniform in log space; low > 0."
    )
    int_: tuple[int, int] | None = Field(
        None, alias="int", description="[low, high], an integer, both ends included."
    )
    logint: tuple[int, int] | None = Field(
        None, description="[low, high], an integer drawn in log space; low >= 1."
    )
    quniform: tuple[float, float, float] | None = Field(
        None, description="[low, high, q]: uniform, rounded to a multiple of q."
    )
    qlogint: tuple[int, int, int] | None = Field(
        None, description="[low, high, q]: an integer in log space, a multiple of q."
    )
    choice: list[Any] | None = Field(
        None, min_length=1, description="A list of values (numbers, strings, lists, mappings)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in self.kinds() if self.bounds(name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one distribution: one of " + ", ".join(self.kinds())
                if not given
                else f"give exactly one distribution, got {', '.join(given)}"
            )
        kind = given[0]
        if kind == "choice":
            return self
        low, high = self.bounds(kind)[:2]
        if not low < high:
            raise ValueError(f"{kind}: low must be < high, got [{low}, {high}]")
        if kind in ("loguniform", "logint", "qlogint") and low <= 0:
            raise ValueError(f"{kind}: low must be > 0 (log scale), got {low}")
        if kind in ("quniform", "qlogint"):
            q = self.bounds(kind)[2]
            if q <= 0:
                raise ValueError(f"{kind}: q must be > 0, got {q}")
            off = [b for b in (low, high) if abs(b / q - round(b / q)) > 1e-9]
            if off:
                raise ValueError(
                    f"{kind}: low and high must be multiples of q={q:g}, got {off[0]:g}; "
                    f"e.g. [{round(low / q) * q:g}, {round(high / q) * q:g}, {q:g}]"
                )
        return self

    @staticmethod
    def kinds() -> list[str]:
        return ["uniform", "loguniform", "int", "logint", "quniform", "qlogint", "choice"]

    def bounds(self, kind: str):
        return getattr(self, "int_" if kind == "int" else kind)

    @property
    def kind(self) -> str:
        return next(k for k in self.kinds() if self.bounds(k) is not None)

    @property
    def is_discrete(self) -> bool:
        return self.kind in ("choice", "int")

    def candidate_values(self) -> list:
        """Values that must be valid for the field: every choice, or both ends of a range."""
        if self.kind == "choice":
            return list(self.choice)
        low, high = self.bounds(self.kind)[:2]
        if self.kind in ("uniform", "loguniform"):
            # an inside point: a float range over an integer field fails here, not in a trial
            return [low, high, low + (high - low) * 0.37]
        return [low, high]

    def grid_values(self) -> list:
        if self.kind == "choice":
            return list(self.choice)
        low, high = self.int_
        return list(range(low, high + 1))


class SearchSpec(_Section):
    algorithm: Literal["bayesian", "gp", "random", "grid"] = Field(
        "bayesian",
        description="bayesian (Optuna TPE) | gp (Optuna Gaussian process) | random | grid "
        "(every combination of the choice/int dimensions once; num_samples is then ignored).",
    )
    seed: int = Field(0, description="Seed of the searcher: same seed, same first proposals.")
    initial_random_trials: int | None = Field(
        None,
        ge=1,
        description="bayesian/gp: random proposals before the model takes over. "
        "null = min(10, max(3, num_samples // 4)).",
    )


class EarlyStoppingSpec(_Section):
    type: Literal["asha", "hyperband", "median", "none"] = Field(
        "asha",
        description="asha (asynchronous successive halving) | hyperband (asynchronous: "
        "brackets of ASHA with growing grace periods) | median (stop below "
        "the median of other trials' running averages) | none.",
    )
    grace_period: int = Field(
        2, ge=1, description="Epochs every trial runs before it can be stopped."
    )
    reduction_factor: float = Field(
        3, gt=1, description="asha/hyperband: keep the top 1/reduction_factor at each rung."
    )


class TuneSpec(_Section):
    """A Ray Tune study over the pipeline's trainer; each trial is one full training."""

    metric: str = Field(
        "val_accuracy",
        description="Trainer metric to optimise: "
        + " | ".join(TRAINER_METRICS)
        + ", or a model plugin's own val_<name>.",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max | min. null = the metric's natural direction."
    )
    num_samples: int = Field(16, ge=1, description="Trials to run (the study's budget).")
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="Trials at once; always also capped by what the cluster's free resources "
        "fit. null = as many as fit.",
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="Stop starting and running trials after this many seconds."
    )
    search: SearchSpec = Field(default_factory=SearchSpec, description="Search algorithm.")
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping of weak trials."
    )
    space: dict[str, Distribution] = Field(
        min_length=1,
        description="Dotted path into the spec (model.*, train.*) -> distribution.",
    )
    max_failed_trials: int | None = Field(
        3, ge=1, description="The study stops once this many trials have failed. null = never."
    )
    trial_retries: int = Field(
        0, ge=0, description="Times a failed trial is restarted before it counts as failed."
    )
    refit: dict[str, Any] | None = Field(
        None,
        description="Train the best configuration once more with these train settings on "
        "top (e.g. {workers: 4, deepspeed: {zero_stage: 2}}: search with cheap single-worker "
        "trials, train the winner data-parallel) and register that model. null = register "
        "the best trial's own model.",
    )

    @model_validator(mode="after")
    def _metric_and_search_fit(self) -> TuneSpec:
        if self.metric not in TRAINER_METRICS and not is_plugin_metric(self.metric):
            raise ValueError(
                f"metric {self.metric!r} is not reported by the trainer; use one of "
                + ", ".join(TRAINER_METRICS)
                + ", or a model plugin's own val_<name>"
            )
        stepped = [p for p, d in self.space.items() if d.kind == "qlogint" and d.qlogint[2] != 1]
        if stepped and self.search.algorithm in ("bayesian", "gp"):
            raise ValueError(
                f"{', '.join(stepped)}: qlogint with q > 1 is not supported by the "
                f"{self.search.algorithm} searcher (Optuna has no stepped log-scale integers); "
                "use logint, or a choice list of the values"
            )
        if self.search.algorithm == "grid":
            continuous = [p for p, d in self.space.items() if not d.is_discrete]
            if continuous:
                raise ValueError(
                    "search.algorithm grid needs choice or int dimensions; "
                    + ", ".join(continuous)
                    + " are continuous: give them a choice list or use bayesian/random"
                )
        return self

    @property
    def resolved_mode(self) -> str:
        """The explicit mode, else the metric's direction (a plugin metric's own direction
        is written into ``mode`` when the pipeline spec is checked against its model)."""
        if self.mode is not None:
            return self.mode
        if self.metric not in TRAINER_METRICS:
            raise ValueError(
                f"tune.metric {self.metric!r} is a plugin's metric: its direction comes from "
                "the model plugin (validate the whole pipeline spec) or set tune.mode"
            )
        return TRAINER_METRICS[self.metric]

    @property
    def initial_random_trials(self) -> int:
        given = self.search.initial_random_trials
        return given if given is not None else min(10, max(3, self.num_samples // 4))

    def grid_size(self) -> int:
        size = 1
        for dist in self.space.values():
            size *= len(dist.grid_values())
        return size

    def planned_trials(self) -> int:
        return self.grid_size() if self.search.algorithm == "grid" else self.num_samples


def _merged(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def refit_train(train: dict, refit: dict) -> TrainSpec:
    """The train section of the refit: a trial's train section with ``tune.refit`` on top.

    Raises:
        pydantic.ValidationError: the combination is not a valid train section.
    """
    return TrainSpec.model_validate(_merged(train, refit))
