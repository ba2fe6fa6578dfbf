"""Epoch metrics go to MLflow from a background outbox; writes queued faster than they land
are sent together, in order."""

from __future__ import annotations

import mlflow

from jobs.tracking import RunTracker


def test_a_backlog_of_epochs_lands_in_order_with_every_value(orch_home):
    uri = f"sqlite:///{orch_home / 'mlflow.db'}"  # the session's empty store, copied
    tracker = RunTracker(uri, "outbox", artifact_root=str(orch_home / "artifacts"))
    run_id = tracker.start("outbox-1", tags={})
    # 3 x 600 metrics: more than one request to MLflow's store takes (1000 metrics)
    for epoch in (1, 2, 3):
        tracker.log_metrics_later({f"m{i}": epoch * 1000 + i for i in range(600)}, step=epoch)
    for epoch in range(4, 24):
        tracker.log_metrics_later({"val_loss": 1 / epoch}, step=epoch)
    tracker.set_tags_later({"orch.runner": "local"})
    tracker.flush(timeout_s=20)

    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(e, 1 / e) for e in range(4, 24)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "m599")] == [
        (1, 1599.0),
        (2, 2599.0),
        (3, 3599.0),
    ]
    run = client.get_run(run_id)
    assert len(run.data.metrics) == 601
    assert run.data.tags["orch.runner"] == "local"
    assert tracker.outbox().retries == 0
