"""orch leaves MLflow's process-wide URIs as the user set them: its fluent calls (log_model,
register_model, load_model of a models:/ URI) point them at orch's store for the call only,
and only jobs/mlflow_fluent.py sets them."""

from __future__ import annotations

import ast

import mlflow

from jobs.mlflow_fluent import fluent_calls
from tests.test_import_graph import our_modules

SETTERS = {"set_tracking_uri", "set_registry_uri"}


def test_only_the_fluent_module_sets_mlflows_process_wide_uris():
    callers = {
        name
        for name, path in our_modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SETTERS
    }
    assert callers == {"jobs.mlflow_fluent"}


def test_a_users_own_uris_are_what_they_set_after_a_fluent_call(tmp_path, monkeypatch):
    mine, ours = f"sqlite:///{tmp_path / 'mine.db'}", f"sqlite:///{tmp_path / 'ours.db'}"
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    mlflow.set_tracking_uri(mine)
    mlflow.set_registry_uri(registry)

    with fluent_calls(ours):
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (ours, ours)
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (mine, registry)


def test_uris_nobody_set_stay_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    monkeypatch.chdir(tmp_path)
    default = mlflow.get_tracking_uri()

    with fluent_calls(f"sqlite:///{tmp_path / 'ours.db'}"):
        pass
    assert not mlflow.is_tracking_uri_set()
    assert mlflow.get_tracking_uri() == default
    assert mlflow.get_registry_uri() == default  # follows the tracking URI again
