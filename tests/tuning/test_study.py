"""Studies of the real trainer (Ray Train + DeepSpeed) on a local Ray, tracked in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.data import prepare
from jobs.model_loading import load_model
from orchestrator import Client, load_spec
from orchestrator.cli import main
from orchestrator.exceptions import SpecError
from orchestrator.plan import plan_for
from tuning.events import StudyStarted, TrialFinished, TrialResult, TrialStarted

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
data: {{source: sklearn://digits, seed: 0}}
model: {{type: mlp, params: {{hidden_sizes: [32]}}}}
train:
  epochs: {epochs}
  batch_size: 64
  optimizer: {{type: {optimizer}, lr: 0.003}}
  workers: 1
  resources_per_worker: {{CPU: 1}}
  checkpoint: {{every_epochs: 1, keep: 1}}
  max_failures: 0
tracking: {{experiment: {name}}}
tune:
{tune}
"""


def write_spec(tmp_path: Path, name: str, tune: str, epochs: int = 4, optimizer="adamw") -> Path:
    path = tmp_path / f"{name}.yaml"
    body = textwrap.indent(textwrap.dedent(tune), "  ")
    path.write_text(SPEC.format(name=name, tune=body, epochs=epochs, optimizer=optimizer))
    return path


def mlflow_client():
    import mlflow

    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def child_runs(client, parent_run_id: str) -> list:
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
    )


def test_bayesian_study_with_asha_runs_the_trainer_and_tracks_every_trial(ray_session, tmp_path):
    path = write_spec(
        tmp_path,
        "asha-study",
        """\
        num_samples: 4
        max_concurrent_trials: 2
        search: {algorithm: bayesian, seed: 3}
        early_stopping: {type: asha, grace_period: 1, reduction_factor: 2}
        space:
          train.optimizer.lr: {loguniform: [0.00001, 0.03]}
          model.params.hidden_sizes: {choice: [[32], [64, 32]]}
        """,
    )
    events: list[dict] = []
    result = Client().run(path, on_event=events.append)
    assert result.task == "classification"
    study = result.study

    # every trial ran the trainer: per-epoch metrics of DeepSpeed workers reached the driver
    assert len(study.trials) == 4
    assert {t.status for t in study.trials} <= {"completed", "stopped"}
    completed = [t for t in study.trials if t.status == "completed"]
    stopped = [t for t in study.trials if t.status == "stopped"]
    assert completed and stopped, [(t.status, t.metric) for t in study.trials]
    assert all(t.epoch == 4 for t in completed)
    for trial in stopped:
        assert 1 <= trial.epoch < 4
        assert trial.reason.startswith(f"ASHA: val_accuracy {trial.metric:.4g} at epoch")
    best = max(completed, key=lambda t: t.metric)
    assert study.best_trial_id == best.trial_id
    assert study.best_metric == pytest.approx(best.metric)
    assert result.metrics["val_accuracy"] == pytest.approx(best.metric)
    assert best.metric > 0.75  # 4 epochs of a small MLP; chance is 0.1

    # concurrency: 1 CPU per trial on a 2-CPU Ray, never more than 2 trials at once
    started = next(e for e in events if isinstance(e, StudyStarted))
    assert started.max_concurrent_trials == 2 and started.trial_resources == {"CPU": 1.0}
    running, most = set(), 0
    for event in events:
        if isinstance(event, TrialStarted):
            running.add(event.trial.trial_id)
        elif isinstance(event, TrialFinished):
            running.discard(event.trial.trial_id)
        most = max(most, len(running))
    assert most <= 2

    # MLflow: a parent run, one child per trial with its status, the best one tagged
    client = mlflow_client()
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["orch.best_trial_id"] == best.trial_id
    children = {r.data.tags["orch.trial_id"]: r for r in child_runs(client, result.mlflow_run_id)}
    assert set(children) == {t.trial_id for t in study.trials}
    for trial in study.trials:
        run = children[trial.trial_id]
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, trial.epoch + 1))
        assert float(run.data.params["train.optimizer.lr"]) == pytest.approx(
            trial.params["train.optimizer.lr"]
        )
        if trial.status == "stopped":
            assert run.info.status == "KILLED"
            assert run.data.tags["orch.trial_status"] == "stopped_early"
            assert run.data.tags["orch.stop_epoch"] == str(trial.epoch)
            assert run.data.tags["orch.stop_reason"] == trial.reason
        else:
            assert run.info.status == "FINISHED"
    assert children[best.trial_id].data.tags.get("orch.best") == "true"
    assert sum(r.data.tags.get("orch.best") == "true" for r in children.values()) == 1

    # parent artifacts: the trials table and the plots
    local = Path(client.download_artifacts(result.mlflow_run_id, "", str(tmp_path / "art")))
    table = pq.read_table(local / "trials.parquet").to_pylist()
    assert sorted(row["trial_id"] for row in table) == sorted(children)
    assert {row["status"] for row in table} == {t.status for t in study.trials}
    for png in ("optimization_history.png", "metric_vs_params.png"):
        assert (local / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the registry stage's model is the best trial's final checkpoint
    model = load_model(result.model_uri, result.tracking_uri)
    spec = load_spec(path)
    data = prepare(spec.data)
    x_val = data.x_val * data.info.feature_std + data.info.feature_mean
    with torch.no_grad():
        probs = model(torch.as_tensor(x_val, dtype=torch.float32)).numpy()
    accuracy = float(np.mean(probs.argmax(axis=1) == data.y_val))
    assert accuracy == pytest.approx(best.metric, abs=0.02)


def test_reused_actors_repeat_a_trial_exactly_and_a_diverged_trial_poisons_nothing(
    ray_session, tmp_path
):
    """Trials reuse their actors: the same configuration gives the same curve on a fresh
    and on a reused actor, and a trial that diverged does not change the next one. The
    study runs one trial at a time because its plan says so (as a queued job's does),
    though the spec leaves the number to the cluster."""
    path = write_spec(
        tmp_path,
        "failing-study",
        """\
        search: {algorithm: grid}
        early_stopping: {type: none}
        max_failed_trials: 2
        space:
          train.optimizer.lr: {choice: [0.05, 0.05, 1.0e+30, 0.05]}
        """,
        epochs=3,
        optimizer="sgd",
    )
    plan = plan_for(load_spec(path), {"CPU": 1.0})  # one trial at a time
    events: list = []
    result = Client().run(path, on_event=events.append, plan=plan)
    out = json.loads(result.model_dump_json())
    (started,) = [e for e in events if isinstance(e, StudyStarted)]
    assert started.max_concurrent_trials == plan.concurrent_trials == 1
    trials = out["study"]["trials"]
    good = [t for t in trials if t["params"]["train.optimizer.lr"] == 0.05]
    (failed,) = [t for t in trials if t["params"]["train.optimizer.lr"] == 1e30]
    assert [t["status"] for t in good] == ["completed"] * 3
    assert all(t["runner"] == "local" for t in trials)
    assert failed["status"] == "failed"
    assert "training diverged at epoch 1" in failed["reason"]
    assert out["study"]["best_params"] == {"train.optimizer.lr": 0.05}
    # one actor ran two trials in a row (pids repeat only when an actor is reused)
    assert len({t["pid"] for t in good}) < len(good)

    client = mlflow_client()

    def val_loss_curve(trial: dict) -> list[float]:
        history = client.get_metric_history(trial["mlflow_run_id"], "val_loss")
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    curves = [val_loss_curve(t) for t in good]
    assert len(curves[0]) == 3
    for curve in curves[1:]:
        assert curve == pytest.approx(curves[0], rel=1e-6)

    run = client.get_run(failed["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["orch.trial_status"] == "failed"
    assert "training diverged" in run.data.tags["orch.error"]


def test_a_multi_worker_trial_trains_on_ray_train_and_refit_trains_the_best_again(
    ray_session, tmp_path, capsys
):
    """Trials of several workers run Ray Train inside their Tune actor; tune.refit trains
    the best configuration again with other train settings, and that model is registered."""
    path = write_spec(
        tmp_path,
        "wide-trials",
        """\
        search: {algorithm: grid}
        early_stopping: {type: none}
        space:
          train.workers: {choice: [2]}
        refit: {workers: 1, epochs: 3, runner: local}
        """,
        epochs=2,
    )
    text = path.read_text().replace("{CPU: 1}", "{CPU: 0.5}")
    path.write_text(text)
    assert main(["run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (trial,) = out["study"]["trials"]
    assert (trial["status"], trial["runner"]) == ("completed", "ray-train")
    assert trial["metrics"]["val_accuracy"] > 0.8
    client = mlflow_client()
    history = client.get_metric_history(trial["mlflow_run_id"], "val_loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert client.get_run(trial["mlflow_run_id"]).data.tags["orch.runner"] == "ray-train"

    # the refit: 3 epochs on the local runner, its own child run, its model registered
    assert out["runner"] == "local" and out["metrics"]["epoch"] == 3
    refit = client.get_run(out["study"]["refit_mlflow_run_id"])
    assert refit.data.tags["orch.stage"] == "refit"
    assert refit.data.tags["mlflow.parentRunId"] == out["mlflow_run_id"]
    assert refit.data.tags["orch.runner"] == "local"
    assert refit.data.params["train.workers"] == "1"
    steps = sorted(m.step for m in client.get_metric_history(refit.info.run_id, "val_loss"))
    assert steps == [1, 2, 3]
    assert refit.data.metrics["val_accuracy"] == pytest.approx(out["metrics"]["val_accuracy"])
    assert out["checkpoint"] == refit.data.tags["orch.checkpoint"]
    version = client.get_model_version(
        out["registered"]["model_name"], out["registered"]["version"]
    )
    assert version.run_id == out["mlflow_run_id"]
    assert float(version.tags["metric.val_accuracy"]) == pytest.approx(
        out["metrics"]["val_accuracy"]
    )


def snapshotted_terminated(orch_home: Path) -> set[str]:
    """The trials Ray Tune's last whole snapshot of the study records as finished, read with
    Tune's public ``ExperimentAnalysis`` (a snapshot cut off mid-copy reads as none)."""
    from ray.tune import ExperimentAnalysis

    finished: set[str] = set()
    for tune_dir in orch_home.glob("studies/*/tune"):
        try:
            trials = ExperimentAnalysis(str(tune_dir)).trials
        except Exception:  # no snapshot yet, or one being copied: ask again on the next poll
            continue
        finished |= {t.trial_id for t in trials if t.status == "TERMINATED"}
    return finished


def test_a_killed_study_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    path = write_spec(
        tmp_path,
        "resumed-study",
        """\
        num_samples: 3
        max_concurrent_trials: 1
        early_stopping: {type: none}
        space:
          train.optimizer.lr: {loguniform: [0.001, 0.01]}
        """,
        epochs=40,  # a few seconds a trial on the local runner: time to kill in between
    )
    client = mlflow_client()
    # The driver joins the session's Ray: killing it ends its Ray job (the study's trial
    # actors with it), and the resume below runs on the same Ray, as after a lost laptop
    # terminal on a cluster.
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--quiet", "--address", address],
        start_new_session=True,  # its own process group
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    finished_before: dict[str, tuple] = {}
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:
            experiment = client.get_experiment_by_name("resumed-study")
            if experiment is not None:
                runs = client.search_runs(
                    [experiment.experiment_id], filter_string="tags.`orch.stage` = 'trial'"
                )
                done = {r.data.tags["orch.trial_id"] for r in runs if r.info.status == "FINISHED"}
                if done and done <= snapshotted_terminated(tmp_path / "orch-home"):
                    break  # Tune's own snapshot has the finished trial: kill now
            time.sleep(0.25)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL, "the study ended before it could be killed"
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`orch.stage` = 'trial'"
    )
    finished_before = {
        r.data.tags["orch.trial_id"]: (r.info.run_id, r.info.end_time)
        for r in runs
        if r.info.status == "FINISHED"
    }
    assert 1 <= len(finished_before) < 3
    (parent_before,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`orch.stage` = 'tune'"
    )
    assert parent_before.info.status == "RUNNING"

    events: list[dict] = []
    result = Client().run(path, on_event=events.append, resume=True)

    restarted = {e.trial.trial_id for e in events if isinstance(e, TrialStarted)}
    assert not restarted & set(finished_before), "a finished trial ran again"
    assert result.mlflow_run_id == parent_before.info.run_id
    assert result.study.study == parent_before.data.tags["orch.study"]
    assert len(result.study.trials) == 3
    assert all(t.status == "completed" for t in result.study.trials)
    for trial_id, (run_id, end_time) in finished_before.items():
        (run,) = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`orch.trial_id` = '{trial_id}'"
        )
        assert (run.info.run_id, run.info.end_time) == (run_id, end_time)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"

    with pytest.raises(SpecError, match="no unfinished study of pipeline 'resumed-study'"):
        Client().run(path, resume=True)


def test_a_killed_trial_actor_resumes_from_its_last_checkpoint(ray_session, tmp_path):
    """A local-runner trial whose actor is SIGKILLed is restarted by Tune (trial_retries)
    and continues from the checkpoint it last reported, not from epoch 1."""
    path = write_spec(
        tmp_path,
        "killed-trial",
        """\
        search: {algorithm: grid}
        early_stopping: {type: none}
        trial_retries: 1
        space:
          train.optimizer.lr: {choice: [0.003]}
        """,
        epochs=40,
    )
    killed: list[int] = []

    def kill_after_epoch_3(event) -> None:
        if isinstance(event, TrialResult) and not killed:
            trial = event.trial
            if trial.epoch >= 3 and trial.pid:
                killed.append(trial.epoch)
                os.kill(trial.pid, signal.SIGKILL)

    result = Client().run(path, on_event=kill_after_epoch_3)

    assert killed, "the trial's actor was never killed"
    (trial,) = result.study.trials
    assert (trial.status, trial.epoch, trial.runner) == ("completed", 40, "local")
    assert trial.metrics["val_accuracy"] > 0.9
    # After the restart the trial went on from the last checkpoint Tune had registered
    # (the kill lands while Tune handles epoch 3's result, so that one or the one before):
    # only the epochs after it ran twice, never epoch 1.
    history = mlflow_client().get_metric_history(trial.mlflow_run_id, "epoch")
    steps = [m.step for m in history]
    assert set(steps) == set(range(1, 41)), steps
    repeated = sorted(step for step in set(steps) if steps.count(step) > 1)
    assert all(step >= 2 for step in repeated) and len(steps) - 40 <= 3, steps
