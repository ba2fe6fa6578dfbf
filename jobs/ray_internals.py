"""Ray's private names, used in this one module (tests/test_private_names.py checks that).

Each use is deliberate: Ray 2.60 has no public way to do what it does, and the test named
beside each fails on the Ray upgrade that moves or renames what it relies on, instead of a
feature breaking quietly. The classes built on Ray's are made on first use, so importing
this module imports none of Ray Train, Tune or Serve.

- **Ray Train** (``in_memory_data_trainer``): every ``fit()`` of Ray Train 2.60 starts a
  ``DatasetManager`` actor (its own process: Python, Ray, Ray Data; about 2.7 s of CPU) even
  when no Ray Dataset is passed, while the workers import torch and DeepSpeed, so on 2 cores
  it delays them. Data read in memory (``jobs.data.prepare``)
  reaches the workers through ``train_loop_config``; for those runs the trainer leaves out the
  private callback that starts the actor (tests/jobs/test_startup.py).
- **Ray Tune** (``explained_asha``, ``explained_median``): Tune's schedulers decide STOP
  without saying why; the reason (the metric, the epoch, the rung cutoff or median it
  missed) is only in their private state: ASHA's ``_trial_info``, its brackets' ``_rungs``,
  ``_metric_op``; the median rule's ``_trials_beyond_time``, ``_running_mean``,
  ``_best_result`` and ``_on_insufficient_samples`` (tests/test_private_names.py).
- **Ray Serve** (``running_http_options``, ``running_grpc_port``): a Serve that is already
  running keeps its own host and ports whatever a spec says, and only the private
  ``_get_global_client`` (and its controller's ``get_grpc_config``) tells them
  (tests/serve/test_grpc.py, tests/test_private_names.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

TIME_ATTR = "epoch"  # what trials report their progress in

StopExplained = Callable[[str, int, str], None]
"""Told (trial id, epoch, why) when a scheduler stops a trial before its last epoch."""


# --------------------------------------------------------------------------- Ray Train


@cache
def in_memory_data_trainer() -> type:
    """``TorchTrainer`` that starts no Ray Data actor when it is given no datasets."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class InMemoryDataTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return InMemoryDataTorchTrainer


# --------------------------------------------------------------------------- Ray Tune


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class _Explains:
    """Mixin: after the scheduler decides STOP before the last epoch, tell ``on_stop`` why."""

    def __init__(self, on_stop: StopExplained, epochs: int, label: str = "ASHA", **kwargs):
        super().__init__(**kwargs)
        self.on_stop = on_stop
        self.epochs = epochs
        self.label = label

    def on_trial_result(self, tune_controller, trial, result):
        from ray.tune.schedulers import TrialScheduler

        before = self._snapshot(trial, result)
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get(TIME_ATTR)
        if decision == TrialScheduler.STOP and epoch is not None and epoch < self.epochs:
            self.on_stop(trial.trial_id, int(epoch), self._reason(trial, result, before))
        return decision

    def _snapshot(self, trial, result):
        return None

    def _reason(self, trial, result, before) -> str:
        raise NotImplementedError


@cache
def _explained_classes() -> tuple[type, type]:
    from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

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
            means = [m for m in means if math.isfinite(m)]
            median = statistics.median(means) if means else float("nan")
            return (
                f"median rule: best {self._metric} {_fmt(self._best_result(trial))} by epoch "
                f"{epoch} is worse than the median {_fmt(median)} of {len(means)} other "
                "trials' running averages"
            )

    return ExplainedASHA, ExplainedMedian


def explained_asha(on_stop: StopExplained, epochs: int, **kwargs):
    """Tune's ``AsyncHyperBandScheduler`` (``kwargs``) that tells ``on_stop`` which rung
    cutoff a stopped trial missed; ``label`` names it in the reason (ASHA, HyperBand)."""
    return _explained_classes()[0](on_stop, epochs, **kwargs)


def explained_median(on_stop: StopExplained, epochs: int, **kwargs):
    """Tune's ``MedianStoppingRule`` (``kwargs``) that tells ``on_stop`` the median a
    stopped trial missed, and never pauses a trial."""
    return _explained_classes()[1](on_stop, epochs, **kwargs)


# --------------------------------------------------------------------------- Ray Serve


@dataclass(frozen=True)
class HttpOptions:
    """Where a running Serve's HTTP proxy (or HAProxy) listens."""

    host: str
    port: int


def running_http_options() -> HttpOptions | None:
    """The running Serve's HTTP host and port; None when Serve is not running."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    options = client.http_config
    return HttpOptions(host=options.host, port=options.port)


def running_grpc_port() -> int | None:
    """The port of the running Serve's gRPC service; None when Serve is not running or
    started without gRPC (no servicer)."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    options = ray.get(client._controller.get_grpc_config.remote(), timeout=30)
    return options.port if options.grpc_servicer_functions else None
