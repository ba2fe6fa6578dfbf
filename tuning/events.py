"""Where a study's driver-side pieces (callback, schedulers) send their events.

Ray Tune pickles its callbacks and schedulers into the experiment state so that a study can
be restored; a function (a CLI display, an MLflow logger) does not pickle. So they carry
the study's name and look its event handler up here, in the driver process, when they fire;
``Tuner.restore`` in a new driver registers a handler under the same name.
"""

from __future__ import annotations

from collections.abc import Callable

_HANDLERS: dict[str, Callable[[dict], None]] = {}


def register(study: str, handler: Callable[[dict], None]) -> None:
    _HANDLERS[study] = handler


def unregister(study: str) -> None:
    _HANDLERS.pop(study, None)


def emit(study: str, event: dict) -> None:
    handler = _HANDLERS.get(study)
    if handler is not None:
        handler({**event, "study": study})
