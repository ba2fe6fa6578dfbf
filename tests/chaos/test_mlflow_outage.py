"""Chaos: the MLflow server goes away for 30 s in the middle of a training run."""

from __future__ import annotations

import threading
import time

import mlflow
import pytest

from jobs.events import EpochEnded
from orchestrator import Client
from tests.conftest import free_port
from tests.helpers import start_mlflow_server, stop_process_group, write

pytestmark = pytest.mark.slow

SPEC = """\
name: outage
data: {{source: sklearn://digits}}
model: {{type: mlp, params: {{hidden_sizes: [64]}}}}
train: {{epochs: {epochs}, batch_size: 64, workers: 1, resources_per_worker: {{CPU: 1}}}}
tracking: {{tracking_uri: "{uri}", experiment: outage}}
"""
EPOCHS = 100
MIDDLE = 50
OUTAGE_S = 30


def test_training_rides_out_a_30_s_mlflow_outage(ray_session, tmp_path, monkeypatch):
    # MLflow's own HTTP retries back off for minutes; the outbox retries anyway, so fewer
    # of them only makes the catch-up after the outage quicker.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path / "mlflow", port)
    spec = write(tmp_path, "outage", SPEC.format(epochs=EPOCHS, uri=uri))
    outcome: dict = {}
    second_epoch, middle, outage_on, outage_over = (threading.Event() for _ in range(4))

    def on_event(event) -> None:
        # The driver queues an epoch's metrics for MLflow, then calls this: holding it holds
        # the driver's queueing (training goes on in its worker). Epoch 2 waits until MLflow
        # is down, epoch MIDDLE until it is back, so epochs 3 to MIDDLE are queued during the
        # outage and the rest after it, whatever the machine's load.
        if isinstance(event, EpochEnded) and event.metrics["epoch"] == 2:
            second_epoch.set()
            outage_on.wait(timeout=180)
        elif isinstance(event, EpochEnded) and event.metrics["epoch"] == MIDDLE:
            middle.set()
            outage_over.wait(timeout=180)

    def run() -> None:
        try:
            outcome["result"] = Client(show_worker_logs=False).run(spec, on_event=on_event)
        except Exception as exc:  # handed to the test below
            outcome["error"] = exc
        finally:
            second_epoch.set()  # a run that ended early ends the waits too
            middle.set()

    thread = threading.Thread(target=run)
    thread.start()
    client = mlflow.MlflowClient(uri)

    try:
        # The outage follows the run's own epochs, not what MLflow shows or the clock: on a
        # loaded machine MLflow's view lagged until all 100 epochs had run (none in the window).
        assert second_epoch.wait(timeout=180), "no second epoch in 180 s"
        assert "error" not in outcome, outcome.get("error")
        stop_process_group(server)
        down_at = time.time()
        outage_on.set()
        assert middle.wait(timeout=180), f"no epoch {MIDDLE} in 180 s"
        time.sleep(max(0.0, down_at + OUTAGE_S - time.time()))
        up_at = time.time()
        server = start_mlflow_server(tmp_path / "mlflow", port)
        outage_over.set()
        thread.join(timeout=600)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert result.status == "succeeded" and result.metrics["epoch"] == EPOCHS

        # Every epoch's metrics reached MLflow, those of the outage window included.
        history = client.get_metric_history(result.mlflow_run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        in_window = [m for m in history if down_at * 1000 <= m.timestamp <= up_at * 1000]
        assert len(in_window) == MIDDLE - 2, "the driver waited for MLflow instead of going on"
        assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    finally:
        outage_on.set()  # a failed assertion leaves no run waiting
        outage_over.set()
        stop_process_group(server)
