"""The one way orch reaches an MLflow store: ``mlflow_client(uri)``.

Runs and their outbox (``jobs.tracking.RunTracker``), a study's parent and child runs
(``tuning.tracking``), model loading and the registry (``serve.registry``) all take their
``MlflowClient`` here: one per tracking URI in a process, with the registry on the same
URI (orch keeps both in one store). None of them reads MLflow's process-wide URIs; the
fluent call that must (``log_model``) goes through
``jobs.mlflow_fluent.fluent_calls``. tests/test_mlflow_fluent.py checks that no other module
builds a client or sets those URIs.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_CLIENTS: dict[str, object] = {}


def mlflow_client(uri: str):
    """The ``MlflowClient`` of the store at ``uri`` (tracking and registry)."""
    with _LOCK:
        client = _CLIENTS.get(uri)
        if client is None:
            import mlflow

            client = _CLIENTS[uri] = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        return client
