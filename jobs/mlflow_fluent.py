"""MLflow's fluent calls pointed at one store for their duration, and nowhere else.

``mlflow.pytorch.log_model``, ``mlflow.register_model`` and ``mlflow.pytorch.load_model`` of a
``models:/`` URI have no client argument: they read MLflow's process-wide tracking and
registry URIs. ``fluent_calls(uri)`` points both at ``uri`` for the block and puts back
what was there before, so a notebook's own ``mlflow.set_tracking_uri`` (or its
``MLFLOW_TRACKING_URI``) is what it set after any orch call. Everything else of ours talks
to MLflow through an ``MlflowClient`` of an explicit URI. This is the only module that sets
the process-wide URIs (tests/test_mlflow_fluent.py checks that).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # one store at a time for the process's fluent calls


@contextmanager
def fluent_calls(uri: str) -> Iterator[None]:
    """MLflow's fluent API on ``uri`` (tracking and registry) inside the block only."""
    with _LOCK:
        before = (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
        _point_at(uri, uri)
        try:
            yield
        finally:
            _point_at(*before)


def _point_at(tracking_uri: str | None, registry_uri: str | None) -> None:
    """Set (or, with None, unset) the process-wide URIs. MLflow mirrors each one it sets in
    its environment variable, which is how ``fluent_calls`` reads what to put back."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    if registry_uri is None:  # set_registry_uri(None) leaves the variable behind
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
