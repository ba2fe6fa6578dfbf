"""The local runner: one worker's training in one process, the same loop as Ray Train's.

What a user relies on: the same metrics epoch by epoch whichever runner trains, a
checkpoint of one runner resuming on the other, and a killed run resuming from its last
checkpoint at the right epoch.
"""

from __future__ import annotations

import os
import signal
import textwrap
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from jobs.data import prepare
from jobs.events import EpochEnded, WorkerStarted
from jobs.spec import DataSpec, ModelSpec, TrainSpec
from jobs.trainer import fit
from orchestrator import Client

pytestmark = pytest.mark.slow

COMPARED = ("train_loss", "val_loss", "val_accuracy", "lr")


def _train(runner: str, epochs: int) -> TrainSpec:
    return TrainSpec(
        epochs=epochs,
        batch_size=64,
        workers=1,
        runner=runner,
        optimizer={"lr": 0.01},
        deepspeed={"zero_stage": 2},
        scheduler={"type": "cosine", "warmup_epochs": 1},
        checkpoint={"every_epochs": 1, "keep": 2},
        max_failures=0,
    )


def test_both_runners_train_alike_and_resume_each_others_checkpoints(ray_session, tmp_path):
    data = prepare(DataSpec(source="sklearn://digits"))
    model = ModelSpec(type="mlp", params={"hidden_sizes": [32], "dropout": 0.1})
    storage = str(tmp_path / "runs")

    def run(name: str, runner: str, epochs: int):
        return fit(model, _train(runner, epochs), data, seed=7, run_name=name, storage_path=storage)

    # Each pair at once (1 CPU each of the session's 2): the runs share nothing but the
    # driver, and the local run's whole life fits in the Ray Train run's start-up.
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run, "a", "ray-train", 3), pool.submit(run, "b", "local", 3)
        by_ray_train, local = (future.result() for future in first)
    assert (by_ray_train.runner, local.runner) == ("ray-train", "local")
    assert [m["epoch"] for m in local.history] == [1, 2, 3]
    for ours, theirs in zip(local.history, by_ray_train.history, strict=True):
        for key in COMPARED:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (key, ours["epoch"])

    # each run continues on the other runner from its epoch-3 checkpoint (epochs 5 now)
    with ThreadPoolExecutor(2) as pool:
        second = pool.submit(run, "a", "local", 5), pool.submit(run, "b", "ray-train", 5)
        a_on_local, b_on_ray_train = (future.result() for future in second)
    for resumed in (a_on_local, b_on_ray_train):
        assert resumed.resumed_from_epochs == [3]
        assert [m["epoch"] for m in resumed.history] == [4, 5]
    for ours, theirs in zip(a_on_local.history, b_on_ray_train.history, strict=True):
        for key in COMPARED:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (key, ours["epoch"])
    assert a_on_local.metrics["val_accuracy"] > 0.85
    assert a_on_local.checkpoint_path.startswith(storage + "/a/checkpoint_")


def test_a_killed_local_run_resumes_from_its_last_checkpoint(ray_session, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(
        textwrap.dedent("""\
        name: local-crash
        data: {source: sklearn://digits}
        model: {type: mlp, params: {hidden_sizes: [64]}}
        train:
          epochs: 30
          batch_size: 64
          workers: 1
          checkpoint: {every_epochs: 1, keep: 2}
          max_failures: 1
        """)
    )
    pids: list[int] = []
    killed: list[int] = []

    def kill_after_epoch_3(event) -> None:
        if isinstance(event, WorkerStarted):
            pids.append(event.pid)
        elif isinstance(event, EpochEnded) and event.metrics["epoch"] >= 3 and not killed:
            killed.append(pids[-1])
            os.kill(pids[-1], signal.SIGKILL)

    result = Client().run(spec, on_event=kill_after_epoch_3)

    assert killed, "the local runner's process was never killed"
    assert result.status == "succeeded" and result.runner == "local"
    assert result.metrics["epoch"] == 30 and result.metrics["val_accuracy"] > 0.9
    # the checkpoint of every reported epoch exists before its event is sent: at least 3
    (resumed,) = result.resumed_from_epochs
    assert 3 <= resumed < 30
    assert len(pids) == 2 and pids[1] != killed[0]
    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["orch.runner"] == "local"
    assert run.data.tags["orch.resumed_from_epoch"] == str(resumed)
    steps = sorted({m.step for m in client.get_metric_history(result.mlflow_run_id, "val_loss")})
    assert steps == list(range(1, 31))


def test_an_epoch_whose_event_died_with_its_worker_is_replayed_from_the_checkpoint():
    # A worker killed between writing epoch 4's checkpoint and sending its event resumes
    # from epoch 4 and sends that epoch again from the checkpoint: the driver keeps it only
    # when it never got it, so every epoch reaches MLflow once.
    from jobs.trainer import _Relay

    seen: list[float] = []
    relay = _Relay(lambda event: seen.append(event.metrics["epoch"]))
    for epoch in (1.0, 2.0, 3.0):
        relay(EpochEnded(metrics={"epoch": epoch}, checkpointed=True))
    relay(EpochEnded(metrics={"epoch": 4.0}, checkpointed=True, replayed=True))  # was lost
    relay(EpochEnded(metrics={"epoch": 4.0}, checkpointed=True, replayed=True))  # now known
    relay(EpochEnded(metrics={"epoch": 5.0}, checkpointed=True))
    assert seen == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [m["epoch"] for m in relay.history] == [1.0, 2.0, 3.0, 4.0, 5.0]

    # a new driver resuming a run starts after the checkpoint's epoch, as before
    fresh = _Relay(None)
    fresh(EpochEnded(metrics={"epoch": 3.0}, checkpointed=True, replayed=True))
    assert fresh.history == []
