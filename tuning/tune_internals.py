"""Ray Tune's private state, read in one place: why a scheduler stopped a trial.

Tune's schedulers decide STOP without saying why; the reason (the metric, the epoch, the
rung cutoff or median it missed) is only in their private state: ASHA's ``_trial_info``,
its brackets' ``_rungs``, ``_metric_op``; the median rule's ``_trials_beyond_time``,
``_running_mean``, ``_best_result`` and ``_on_insufficient_samples``. This is the only
module that touches Ray Tune's private names (tests/test_private_names.py checks both that
and that the names still exist, so the upgrade that moves one fails a test).
"""

from __future__ import annotations

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

from tuning import events

TIME_ATTR = "epoch"  # what trials report their progress in


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
            reason = self._reason(trial, result, before)
            events.emit(self.study, events.StopDecision(trial.trial_id, int(epoch), reason))
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
