"""Where a study's driver-side pieces (callback, schedulers) send their events.

Ray Tune pickles its callbacks and schedulers into the experiment state so that a study can
be restored; a function (a CLI display, an MLflow logger) does not pickle. So they carry
the study's name and look its event handler up here, in the driver process, when they fire;
``Tuner.restore`` in a new driver registers a handler under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.events import Event

if TYPE_CHECKING:
    from tuning.summary import TrialSummary

# --------------------------------------------------------------------------- Tune's hooks
# What the study's callback and schedulers report from Ray Tune (raw: a trial's id and
# config); the study's tracker turns them into the study events below.


@dataclass(frozen=True)
class HookStarted(Event):
    kind: ClassVar[str] = "trial_started"

    trial_id: str
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HookResult(Event):
    kind: ClassVar[str] = "trial_result"

    trial_id: str
    config: dict
    metrics: dict
    checkpoint: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class HookComplete(Event):
    kind: ClassVar[str] = "trial_complete"

    trial_id: str
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HookError(Event):
    kind: ClassVar[str] = "trial_error"

    trial_id: str
    config: dict
    error: str


@dataclass(frozen=True)
class StopDecision(Event):
    """A scheduler stopped a trial before its last epoch, and why."""

    kind: ClassVar[str] = "trial_stop_decision"

    trial_id: str
    epoch: int
    reason: str


TuneHook = HookStarted | HookResult | HookComplete | HookError | StopDecision

# --------------------------------------------------------------------------- study events
# What a study hands to ``on_event``: each carries a snapshot of its trial.


@dataclass(frozen=True)
class StudyStarted(Event):
    kind: ClassVar[str] = "study_started"

    study: str
    planned_trials: int
    max_concurrent_trials: int
    trial_resources: dict[str, float]
    metric: str
    mode: str
    resumed: bool
    path: str


@dataclass(frozen=True)
class TrialStarted(Event):
    kind: ClassVar[str] = "trial_started"

    trial: TrialSummary


@dataclass(frozen=True)
class TrialResult(Event):
    """A trial reported an epoch."""

    kind: ClassVar[str] = "trial_result"

    trial: TrialSummary
    best_so_far: float | None = None


@dataclass(frozen=True)
class TrialFinished(Event):
    """A trial completed, was stopped early, or failed (``trial.status`` says which)."""

    kind: ClassVar[str] = "trial_finished"

    trial: TrialSummary
    best_so_far: float | None = None


@dataclass(frozen=True)
class StudyFinished(Event):
    kind: ClassVar[str] = "study_finished"

    outcome: Any  # tuning.study.StudyOutcome


StudyEvent = StudyStarted | TrialStarted | TrialResult | TrialFinished | StudyFinished

# --------------------------------------------------------------------------- the registry

_HANDLERS: dict[str, Callable[[TuneHook], None]] = {}


def register(study: str, handler: Callable[[TuneHook], None]) -> None:
    _HANDLERS[study] = handler


def unregister(study: str) -> None:
    _HANDLERS.pop(study, None)


def emit(study: str, event: TuneHook) -> None:
    handler = _HANDLERS.get(study)
    if handler is not None:
        handler(event)
