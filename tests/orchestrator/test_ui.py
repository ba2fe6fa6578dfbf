"""`orch ui` serves the MLflow UI on the embedded store, bound to 127.0.0.1 only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ORCH = str(Path(sys.executable).with_name("orch"))


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP connect sends nothing
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _wait_healthy(ui: subprocess.Popen, port: int) -> None:
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                assert r.status == 200
                return
        except OSError:
            assert ui.poll() is None, "orch ui exited"
            assert time.time() < deadline, "MLflow UI did not come up"
            time.sleep(1)


@pytest.mark.fresh_mlflow_store
def test_ui_serves_embedded_store_on_loopback(orch_home):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ui = subprocess.Popen(
        [ORCH, "ui", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(ui, port)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", timeout=10
        ) as r:
            assert b"experiments" in r.read()
        assert (orch_home / "mlflow.db").exists()  # the embedded store it opened
        outside = _outside_address()
        if outside:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((outside, port)) != 0, "UI reachable from outside loopback"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_read_only_ui_shows_the_store_and_changes_nothing(orch_home):
    """`orch ui --read-only` (a shared queue's members' UI): runs and registered models are
    read as usual; creating, renaming or deleting is refused and the store is unchanged."""
    import json

    import httpx
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("vision-exp")
    run = client.create_run(experiment, run_name="vision-run")
    client.log_metric(run.info.run_id, "val_accuracy", 0.9)
    client.create_registered_model("vision-iris")

    port = free_port()
    ui = subprocess.Popen(
        [ORCH, "ui", "--read-only", "--port", str(port)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow"
    try:
        _wait_healthy(ui, port)
        found = httpx.post(f"{api}/runs/search", json={"experiment_ids": [experiment]}).json()
        assert [r["info"]["run_name"] for r in found["runs"]] == ["vision-run"]
        models = httpx.get(f"{api}/registered-models/search").json()["registered_models"]
        assert [m["name"] for m in models] == ["vision-iris"]
        writes = [
            ("experiments/create", {"name": "intruder"}),
            ("experiments/delete", {"experiment_id": experiment}),
            ("runs/delete", {"run_id": run.info.run_id}),
            ("registered-models/rename", {"name": "vision-iris", "new_name": "mine"}),
            ("runs/log-metric", {"run_id": run.info.run_id, "key": "val_accuracy",
                                 "value": 0.1, "timestamp": 0, "step": 0}),
        ]  # fmt: skip
        for path, body in writes:
            answer = httpx.post(f"{api}/{path}", json=body, timeout=30)
            assert answer.status_code >= 400, (path, answer.text)
            assert "readonly database" in json.dumps(answer.json()), (path, answer.text)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert [e.name for e in client.search_experiments()] == ["vision-exp", "Default"]
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"
    assert client.get_run(run.info.run_id).data.metrics == {"val_accuracy": 0.9}
    assert [m.name for m in client.search_registered_models()] == ["vision-iris"]


def test_read_only_ui_refuses_a_tracking_server_in_one_line(orch_home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    done = subprocess.run([ORCH, "ui", "--read-only"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --read-only serves a SQLite store, not http://mlflow.example:5000")
    )
