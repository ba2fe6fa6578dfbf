"""orch reaches MLflow one way and leaves its process-wide URIs as the user set them: every
client comes from jobs/mlflow_store.py (one per store), and the fluent calls (log_model,
register_model, load_model of a models:/ URI) point the URIs at orch's store for the call
only, from jobs/mlflow_fluent.py alone."""

from __future__ import annotations

import ast

import mlflow

from jobs.mlflow_fluent import fluent_calls
from tests.helpers import our_modules

SETTERS = {"set_tracking_uri", "set_registry_uri"}


def test_one_call_in_the_fluent_module_sets_mlflows_process_wide_uris():
    calls = [
        (name, node.func.attr)
        for name, path in our_modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SETTERS
    ]
    assert calls == [("jobs.mlflow_fluent", "set_tracking_uri")]


def test_only_the_store_module_builds_mlflow_clients():
    builders = {
        name
        for name, path in our_modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "MlflowClient"
    }
    assert builders == {"jobs.mlflow_store"}


def test_one_client_per_store_with_its_registry_in_the_same_store(orch_home):
    from jobs.mlflow_store import mlflow_client

    uri = f"sqlite:///{orch_home / 'mlflow.db'}"  # the session's empty store, copied
    assert mlflow_client(uri) is mlflow_client(uri)
    mlflow_client(uri).create_registered_model("one-store")
    mlflow.set_registry_uri(f"sqlite:///{orch_home / 'elsewhere.db'}")  # not followed
    reader = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert reader.get_registered_model("one-store").name == "one-store"


def test_a_users_own_uris_are_what_they_set_after_a_fluent_call(tmp_path, monkeypatch):
    mine, ours = f"sqlite:///{tmp_path / 'mine.db'}", f"sqlite:///{tmp_path / 'ours.db'}"
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    mlflow.set_tracking_uri(mine)
    mlflow.set_registry_uri(registry)

    with fluent_calls(ours):  # logging goes to ours; the user's registry is never touched
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (ours, registry)
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
