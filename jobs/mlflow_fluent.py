"""MLflow's fluent logging pointed at one store for its duration, and nowhere else.

``mlflow.pytorch.log_model`` has no client argument: it logs into the active run of
MLflow's process-wide tracking URI. ``fluent_calls(uri)`` points that URI at ``uri`` for the
block and puts back what was there before, so a notebook's own ``mlflow.set_tracking_uri``
(or its ``MLFLOW_TRACKING_URI``) is what it set after any orch call. The registry URI is
never touched: registration goes through an ``MlflowClient`` (``serve.registry``) and models
are read back through ``mlflow.artifacts.download_artifacts`` with explicit URIs
(``jobs.model_loading``). This is the only module that sets a process-wide URI, in one call
(tests/test_mlflow_fluent.py checks that).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # one store at a time for the process's fluent calls


@contextmanager
def fluent_calls(uri: str) -> Iterator[None]:
    """MLflow's fluent logging on ``uri`` inside the block only."""
    with _LOCK:
        before = os.environ.get("MLFLOW_TRACKING_URI")
        _point_at(uri)
        try:
            yield
        finally:
            _point_at(before)


def _point_at(tracking_uri: str | None) -> None:
    """Set (or, with None, unset) the process-wide tracking URI. MLflow mirrors it in
    ``MLFLOW_TRACKING_URI``, which is how ``fluent_calls`` reads what to put back."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
