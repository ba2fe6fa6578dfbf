"""Factories for the searcher and the early-stopping scheduler, keyed by the spec's names.

The schedulers are Ray Tune's own, each with a thin subclass that says *why* it stopped a
trial (the metric, the epoch, the cutoff it missed): the CLI prints it and MLflow keeps it
as the trial's ``orch.stop_reason`` tag. The subclasses read Tune's private state, so they
live in ``jobs.ray_internals``, the one module on Ray's private names.
"""

from __future__ import annotations

import warnings

import numpy as np
from ray.tune.schedulers import FIFOScheduler

from jobs.ray_internals import TIME_ATTR, explained_asha, explained_median
from tuning import events
from tuning.spec import TuneSpec

__all__ = ["TIME_ATTR", "create_scheduler", "create_searcher"]


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


def _stop_reporter(study: str):
    """The study's StopDecision event for each trial a scheduler stops early."""

    def report(trial_id: str, epoch: int, reason: str) -> None:
        events.emit(study, events.StopDecision(trial_id, epoch, reason))

    return report


def create_scheduler(tune: TuneSpec, epochs: int, study: str):
    """The early-stopping scheduler; trials are measured in epochs."""
    early = tune.early_stopping
    if early.type == "none":
        return FIFOScheduler()
    if early.type == "asha":
        return explained_asha(
            _stop_reporter(study),
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
        return explained_asha(
            _stop_reporter(study),
            epochs,
            label="HyperBand",
            time_attr=TIME_ATTR,
            max_t=epochs,
            grace_period=grace,
            reduction_factor=early.reduction_factor,
            brackets=brackets,
        )
    return explained_median(
        _stop_reporter(study),
        epochs,
        time_attr=TIME_ATTR,
        grace_period=early.grace_period,
        min_samples_required=3,
    )
