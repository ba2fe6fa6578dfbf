"""Factories for the searcher and the early-stopping scheduler, keyed by the spec's names.

The schedulers are Ray Tune's own, each with a thin subclass that says *why* it stopped a
trial (the metric, the epoch, the cutoff it missed): the CLI prints it and MLflow keeps it
as the trial's ``orch.stop_reason`` tag.
"""

from __future__ import annotations

import warnings

import numpy as np
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    TrialScheduler,
)

from tuning import events
from tuning.spec import TuneSpec

TIME_ATTR = "epoch"


def create_searcher(tune: TuneSpec, max_concurrent: int | None = None):
    """bayesian: Optuna TPE; gp: Optuna's Gaussian process; random / grid: Tune's own.

    ``max_concurrent`` caps trials at once for random/grid (Tune's TuneConfig cap only
    wraps the model-based searchers).
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    algorithm, seed = tune.search.algorithm, tune.search.seed
    if algorithm in ("random", "grid"):
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    n_init = tune.initial_random_trials
    if algorithm == "bayesian":
        # multivariate TPE models the dimensions jointly (better on coupled ones such as
        # lr x batch size); constant_liar keeps concurrent trials from proposing twins.
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_init, multivariate=True, constant_liar=True
        )
    else:
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_init)
    return OptunaSearch(sampler=sampler)


def create_scheduler(tune: TuneSpec, epochs: int, study: str):
    """The early-stopping scheduler; trials are measured in epochs."""
    early = tune.early_stopping
    if early.type == "none":
        return FIFOScheduler()
    if early.type == "asha":
        return ExplainedASHA(
            study,
            epochs,
            time_attr=TIME_ATTR,
            max_t=epochs,
            grace_period=min(early.grace_period, epochs),
            reduction_factor=early.reduction_factor,
        )
    if early.type == "hyperband":
        # Asynchronous HyperBand (Li et al., "A System for Massively Parallel Hyperparameter
        # Tuning"): successive-halving brackets with different grace periods, trials assigned
        # to brackets at random; weak trials stop, none are paused (a pause would tear down
        # the trial's Ray Train workers and Tune's synchronous HyperBand never applied its
        # pauses to our trials in a measured 9-trial study).
        grace = min(early.grace_period, epochs)
        brackets = max(1, int(np.log(epochs / grace) / np.log(early.reduction_factor)) + 1)
        return ExplainedASHA(
            study,
            epochs,
            label="HyperBand",
            time_attr=TIME_ATTR,
            max_t=epochs,
            grace_period=grace,
            reduction_factor=early.reduction_factor,
            brackets=brackets,
        )
    return ExplainedMedian(
        study,
        epochs,
        time_attr=TIME_ATTR,
        grace_period=early.grace_period,
        min_samples_required=3,
    )


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class _Explains:
    """Mixin: after the scheduler decides STOP before the last epoch, emit the reason."""

    def __init__(self, study: str, epochs: int, label: str = "ASHA", **kwargs):
        super().__init__(**kwargs)
        self.study = study
        self.epochs = epochs
        self.label = label

    def on_trial_result(self, tune_controller, trial, result):
        before = self._snapshot(trial, result)
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get(TIME_ATTR)
        if decision == TrialScheduler.STOP and epoch is not None and epoch < self.epochs:
            events.emit(
                self.study,
                {
                    "type": "trial_stop_decision",
                    "trial_id": trial.trial_id,
                    "epoch": int(epoch),
                    "reason": self._reason(trial, result, before),
                },
            )
        return decision

    def _snapshot(self, trial, result):
        return None

    def _reason(self, trial, result, before) -> str:
        raise NotImplementedError


class ExplainedASHA(_Explains, AsyncHyperBandScheduler):
    """ASHA that says which rung cutoff a stopped trial missed."""

    def _snapshot(self, trial, result):
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return None
        return [(milestone, dict(recorded)) for milestone, recorded in bracket._rungs], bracket

    def _reason(self, trial, result, before) -> str:
        metric, epoch = self._metric, result[TIME_ATTR]
        value = result[metric]
        if before is not None:
            rungs, bracket = before
            for milestone, recorded in rungs:
                if epoch >= milestone and trial.trial_id not in recorded and recorded:
                    cutoff = bracket.cutoff(recorded) * self._metric_op
                    return (
                        f"{self.label}: {metric} {_fmt(value)} at epoch {epoch} is "
                        f"{'below' if self._metric_op > 0 else 'above'} the rung cutoff "
                        f"{_fmt(cutoff)} (top 1/{_fmt(bracket.rf)} of the "
                        f"{len(recorded)} trials that reached epoch {milestone:g})"
                    )
        return f"{self.label}: {metric} {_fmt(value)} at epoch {epoch} missed its rung cutoff"


class ExplainedMedian(_Explains, MedianStoppingRule):
    """Stops a trial whose best result is worse than the median of others' averages."""

    def _on_insufficient_samples(self, tune_controller, trial, time: float) -> str:
        # Tune's rule pauses a trial to let pending ones catch up; pausing one of ours
        # tears down its Ray Train workers (tens of seconds to restart), so it runs on.
        return TrialScheduler.CONTINUE

    def _reason(self, trial, result, before) -> str:
        epoch = result[TIME_ATTR]
        others = [t for t in self._trials_beyond_time(epoch) if t is not trial]
        means = [self._running_mean(t, epoch) for t in others]
        means = [m for m in means if np.isfinite(m)]
        median = float(np.median(means)) if means else float("nan")
        return (
            f"median rule: best {self._metric} {_fmt(self._best_result(trial))} by epoch "
            f"{epoch} is worse than the median {_fmt(median)} of {len(means)} other trials' "
            "running averages"
        )
