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
    queued_in_outage: dict[int, float] = {}  # epoch -> val_accuracy, queued while MLflow was down

    def on_event(event) -> None:
        # The driver queues an epoch's metrics for MLflow, then calls this: holding it holds
        # the driver's queueing (training goes on in its worker). Epoch 2 waits until MLflow
        # is down, epoch MIDDLE until it is back, so epochs 3 to MIDDLE are queued during the
        # outage and the rest after it, whatever the machine's load.
        if not isinstance(event, EpochEnded):
            return
        if outage_on.is_set() and not outage_over.is_set():
            queued_in_outage[int(event.metrics["epoch"])] = event.metrics["val_accuracy"]
        if event.metrics["epoch"] == 2:
            second_epoch.set()
            outage_on.wait(timeout=180)
        elif event.metrics["epoch"] == MIDDLE:
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

        # The driver went on while MLflow was down (epochs 3 to MIDDLE passed through it then),
        # and every epoch's metrics reached MLflow, those of the outage included, with their
        # values. (Metric timestamps are the worker's, so they say when an epoch ended, not
        # when the driver queued it: they cannot tell the two apart.)
        assert sorted(queued_in_outage) == list(range(3, MIDDLE + 1)), sorted(queued_in_outage)
        history = client.get_metric_history(result.mlflow_run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        logged = {m.step: m.value for m in history}
        assert {e: logged[e] for e in queued_in_outage} == pytest.approx(queued_in_outage)
        assert up_at - down_at >= OUTAGE_S
        assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    finally:
        outage_on.set()  # a failed assertion leaves no run waiting
        outage_over.set()
        stop_process_group(server)
