"""Training end to end on a real Ray, DeepSpeed and MLflow store: what a user sees in MLflow,
what a worker crash costs, and that other data and models train too."""

from __future__ import annotations

import getpass
import json
import os
import signal
import textwrap

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from jobs.data import prepare
from jobs.events import EpochEnded, WorkerStarted
from orchestrator import Client, load_spec
from orchestrator.cli import main
from orchestrator.events import StageStarted
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow


def test_digits_example_reaches_target_and_is_tracked(ray_session, tmp_path):
    """The example's training on its own (its study is tested in tests/tuning, its serving in
    tests/serve, and the serve stage of `orch run` in tests/orchestrator/test_job_submit)."""
    spec = load_spec(EXAMPLES / "digits.yaml").model_copy(update={"tune": None, "serve": None})
    events = []
    result = Client().run(spec, on_event=events.append)

    assert result.status == "succeeded" and result.task == "classification"
    assert result.metrics["val_accuracy"] >= 0.95
    assert result.metrics["epoch"] == 20

    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    assert run.data.params["train.deepspeed.zero_stage"] == "2"
    assert run.data.params["model.params.hidden_sizes"] == "[128, 64]"
    assert run.data.tags["orch.pipeline"] == "digits-mlp"
    assert run.data.tags["orch.user"] == getpass.getuser()  # a local run: who ran it
    history = client.get_metric_history(result.mlflow_run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, 21))
    for key in ("train_loss", "val_loss", "samples_per_s"):
        assert len(client.get_metric_history(result.mlflow_run_id, key)) == 20

    spec_path = client.download_artifacts(result.mlflow_run_id, "spec.yaml")
    with open(spec_path) as f:
        assert yaml.safe_load(f) == spec.model_dump(mode="json")

    # The logged model is a plain torch program that takes raw features. The SDK reads it
    # from the store it names whatever MLflow's process-wide URI says, and leaves that alone.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    model = Client().load_model(result.model_uri, tracking_uri=result.tracking_uri)
    assert mlflow.get_tracking_uri() == elsewhere
    mlflow.set_tracking_uri(result.tracking_uri)  # for get_model_info below
    data = prepare(load_spec(EXAMPLES / "digits.yaml").data)
    raw_val = data.x_val * np.array(data.info.feature_std) + np.array(data.info.feature_mean)
    with torch.no_grad():
        probs = model(torch.as_tensor(raw_val, dtype=torch.float32))
    assert probs.shape == (len(raw_val), 10)
    assert torch.allclose(probs.sum(-1), torch.ones(len(raw_val)), atol=1e-4)
    accuracy = (probs.argmax(-1).numpy() == data.y_val).mean()
    assert accuracy == pytest.approx(result.metrics["val_accuracy"], abs=0.02)
    info = mlflow.models.get_model_info(result.model_uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 64)
    assert info.metadata["classes"] == list(range(10))

    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages == ["data", "connect", "train", "log_model", "register"]

    # the run's model is registered with its lineage; the first good version takes the alias
    registered = result.registered
    assert (registered.model_name, registered.version, registered.promoted) == (
        "digits-classifier",
        "1",
        True,
    )
    version = mlflow.MlflowClient(result.tracking_uri).get_model_version_by_alias(
        "digits-classifier", "champion"
    )
    assert str(version.version) == "1"
    assert version.tags["orch.mlflow_run_id"] == result.mlflow_run_id
    assert version.tags["orch.data_fingerprint"] == run.data.tags["orch.data_fingerprint"]
    assert float(version.tags["metric.val_accuracy"]) == pytest.approx(
        result.metrics["val_accuracy"]
    )


def test_killed_worker_resumes_from_checkpoint(ray_session, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(
        textwrap.dedent("""\
        name: crash
        data: {source: sklearn://digits}
        model: {type: mlp, params: {hidden_sizes: [64]}}
        train:
          epochs: 6
          batch_size: 64
          workers: 2
          deepspeed: {zero_stage: 2}
          checkpoint: {every_epochs: 1, keep: 2}
          max_failures: 2
        """)
    )
    pids: dict[int, int] = {}
    killed: list[int] = []

    def kill_rank1_after_epoch3(event) -> None:
        if isinstance(event, WorkerStarted):
            pids[event.rank] = event.pid
        elif isinstance(event, EpochEnded) and event.metrics["epoch"] == 3 and not killed:
            killed.append(pids[1])
            os.kill(pids[1], signal.SIGKILL)

    result = Client().run(spec, on_event=kill_rank1_after_epoch3)

    assert killed, "the worker was never killed"
    assert result.status == "succeeded"
    assert result.metrics["epoch"] == 6
    # Resumed from a checkpoint, not epoch 0. Ray registers checkpoints by polling, so on a
    # loaded machine the last one registered before the crash may be epoch 1's (CI: 1).
    assert len(result.resumed_from_epochs) == 1
    assert 1 <= result.resumed_from_epochs[0] <= 3
    assert result.metrics["val_accuracy"] > 0.9
    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.tags["orch.resumed_from_epoch"] == str(result.resumed_from_epochs[0])


def test_transformer_regression_from_parquet(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    y = 3.0 * x[:, 0] - 2.0 * x[:, 1] * x[:, 2] + 10.0 + rng.normal(scale=0.1, size=600)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(6)}, "price": y})
    pq.write_table(table, tmp_path / "houses.parquet")
    spec = tmp_path / "p.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        name: houses
        data: {{source: {tmp_path / "houses.parquet"}, label: price}}
        model: {{type: transformer, params: {{d_model: 32, num_heads: 4, num_layers: 2}}}}
        train:
          epochs: 12
          batch_size: 32
          optimizer: {{type: adam, lr: 0.003}}
          workers: 2
          deepspeed: {{zero_stage: 1, precision: bf16}}
          checkpoint: {{every_epochs: 4, keep: 1}}
        """)
    )
    result = Client().run(spec)
    label_std = float(np.std(y))
    assert "val_accuracy" not in result.metrics
    assert result.task == "regression"  # from the data, not guessed from metric names
    assert result.metrics["val_rmse"] < 0.5 * label_std  # far better than predicting the mean

    model = mlflow.pytorch.load_model(result.model_uri)
    with torch.no_grad():
        pred = model(torch.as_tensor(x[:50], dtype=torch.float32)).numpy()
    assert pred.shape == (50,)
    assert np.sqrt(np.mean((pred - y[:50]) ** 2)) < 0.5 * label_std  # in the label's units


def test_cli_run_json_cnn_on_digits(ray_session, tmp_path, capsys):
    spec = tmp_path / "p.yaml"
    spec.write_text(
        textwrap.dedent("""\
        name: digits-cnn
        data: {source: sklearn://digits}
        model: {type: cnn, params: {channels: [8, 16]}}
        train:
          epochs: 4
          batch_size: 32
          optimizer: {type: sgd, lr: 0.05}
          scheduler: {type: step, step_size_epochs: 2, gamma: 0.5}
          workers: 1
          deepspeed: {zero_stage: 0, gradient_accumulation_steps: 2, gradient_clipping: 1.0}
        """)
    )
    assert main(["run", str(spec), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert result["name"] == "digits-cnn"
    assert result["status"] == "succeeded"
    assert result["resumed_from_epochs"] == []  # an undisturbed run never resumes
    assert result["metrics"]["val_accuracy"] > 0.85
    assert result["metrics"]["lr"] == pytest.approx(0.05 * 0.5**2, rel=0.05)
    client = mlflow.MlflowClient(result["tracking_uri"])
    run = client.get_run(result["mlflow_run_id"])
    # the MLflow UI opens this experiment on its training runs, not on the GenAI overview
    kind = client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
