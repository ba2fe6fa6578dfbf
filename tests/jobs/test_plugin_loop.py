"""A model named only in YAML, from an installed package (examples/plugin) or the user's own
module, through the whole loop: DeepSpeed training on Ray Train (ZeRO-2 on the plugin's own
nn.Module; pipeline parallel on its layer list), MLflow with the plugin's package and
version on the registered version, the int8 gate, Serve, and a V2 infer with tritonclient.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from orchestrator import Client
from orchestrator.loader import load_spec
from serve.registry import Registry
from tests.conftest import free_port
from tests.helpers import wait_serve_stopped, write

pytestmark = pytest.mark.slow

SPEC = """\
name: byo-{name}
data: {{source: sklearn://breast_cancer, seed: 0}}
model: {model}
train:
  epochs: {epochs}
  batch_size: 64
  workers: 2
  resources_per_worker: {{CPU: 0.5}}
  optimizer: {{lr: 0.003}}
  deepspeed: {deepspeed}
tracking: {{tracking_uri: "{store}"}}
register: {{model_name: byo-{name}}}
"""


def test_an_installed_plugins_module_trains_registers_and_serves(ray_session, tmp_path):
    import tritonclient.http as triton
    from ray import serve

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = free_port()
    text = SPEC.format(
        name="residual",
        model="{type: residual-mlp, params: {width: 32, blocks: 2}}",
        epochs=12,
        deepspeed="{zero_stage: 2}",
        store=store,
    ) + (
        f"serve: {{name: byo, port: {port}, quantization: dynamic-int8, cpus_per_replica: 0.25}}\n"
    )
    wait_serve_stopped()
    try:
        result = Client(show_worker_logs=False).run(write(tmp_path, "residual", text))
        assert result.status == "succeeded" and result.runner == "ray-train"
        assert result.metrics["val_accuracy"] >= 0.93, result.metrics

        registry = Registry(store).client
        version = registry.get_model_version("byo-residual", result.registered.version)
        assert version.tags["orch.model_type"] == "residual-mlp"
        assert version.tags["orch.model_plugin"] == (
            "entry point orch_example_plugin.models:residual_mlp from orch-example-plugin 0.1.0"
        )
        (variant,) = result.served.variants  # the int8 gate passed: int8 is what serves
        assert (variant.quantization, variant.runtime) == ("dynamic-int8", "onnxruntime")
        assert variant.drop <= 0.01  # (a model this small is no smaller in int8)

        data = load_breast_cancer()
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_metadata("byo-residual")["inputs"][0]["shape"] == [-1, 30]
        tensor = triton.InferInput("features", [len(data.target), 30], "FP32")
        tensor.set_data_from_numpy(data.data.astype(np.float32))
        predicted = client.infer("byo-residual", [tensor]).as_numpy("class")
        assert float(np.mean(predicted == data.target)) >= 0.93
    finally:
        serve.shutdown()


def test_a_plugins_layer_list_trains_pipeline_parallel(ray_session, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = SPEC.format(
        name="gated",
        model="{type: gated-mlp, params: {hidden_sizes: [32, 16]}}",
        epochs=10,
        deepspeed="{pipeline_stages: 2}",
        store=store,
    )
    result = Client(show_worker_logs=False).run(write(tmp_path, "gated", text))
    assert result.status == "succeeded" and result.metrics["val_accuracy"] >= 0.9, result.metrics


def test_a_users_own_module_by_import_path_trains_in_rays_workers(
    ray_session, tmp_path, monkeypatch
):
    """The embedded default: the user's module beside the spec, imported by Ray's workers."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n"
        "def build(params, shape):\n"
        "    return nn.Sequential(nn.Linear(shape.n_features, params.width), nn.Tanh(),\n"
        "                         nn.Linear(params.width, shape.n_outputs))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = SPEC.format(
        name="mine",
        model="{type: 'my_models:build', params: {width: 24}}",
        epochs=8,
        deepspeed="{zero_stage: 1}",
        store=store,
    )
    result = Client(show_worker_logs=False).run(write(tmp_path, "mine", text))
    assert result.status == "succeeded" and result.metrics["val_accuracy"] >= 0.9, result.metrics
    version = Registry(store).client.get_model_version("byo-mine", result.registered.version)
    assert version.tags["orch.model_plugin"] == "import path my_models:build"


def test_a_study_searches_a_plugins_own_params_on_its_own_metric(ray_session, tmp_path):
    """Tune over the plugin's params, optimising the plugin's own metric (val_brier, lower is
    better: the direction comes from the plugin), which MLflow records and promote_if gates."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = (
        "name: byo-study\n"
        "data: {source: sklearn://breast_cancer, seed: 0}\n"
        "model: {type: residual-mlp, params: {width: 16}}\n"
        "train: {epochs: 4, batch_size: 64, workers: 1, resources_per_worker: {CPU: 1},\n"
        "        optimizer: {lr: 0.003}}\n"
        f'tracking: {{tracking_uri: "{store}"}}\n'
        "register: {model_name: byo-study, promote_if: {max: 0.2}}\n"
        "tune:\n"
        "  metric: val_brier\n"
        "  num_samples: 4\n"
        "  max_concurrent_trials: 2\n"
        "  search: {algorithm: bayesian, seed: 1}\n"
        "  space:\n"
        "    model.params.width: {choice: [8, 16, 32]}\n"
        "    model.params.blocks: {choice: [1, 2]}\n"
    )
    path = write(tmp_path, "study", text)
    assert load_spec(path, check_data=False).tune.resolved_mode == "min"  # the plugin's
    result = Client(show_worker_logs=False).run(path)
    assert result.status == "succeeded" and len(result.study.trials) == 4
    assert {t.status for t in result.study.trials} <= {"completed", "stopped"}, result.study
    assert result.study.best_params["model.params.width"] in (8, 16, 32)
    done = [t for t in result.study.trials if t.status == "completed"]
    assert all(0 <= t.metrics["val_brier"] <= 2 for t in done), done
    assert (result.study.metric, result.study.mode) == ("val_brier", "min")
    assert result.study.best_metric == min(t.metric for t in done)  # min: lower wins
    assert result.metrics["val_accuracy"] >= 0.9, result.metrics

    client = Registry(store).client
    version = client.get_model_version("byo-study", result.registered.version)
    study_run = client.get_run(version.run_id)  # the study's parent run, and its best trial's
    assert study_run.data.metrics["best_val_brier"] == pytest.approx(result.study.best_metric)
    history = client.get_metric_history(result.study.best_mlflow_run_id, "val_brier")
    assert [m.step for m in history] == [1, 2, 3, 4]  # every epoch's, in the trial's run
    assert history[-1].value == pytest.approx(result.metrics["val_brier"])
    # promote_if compared the plugin's metric (under its 0.2 ceiling: promoted)
    assert result.registered.promoted and result.metrics["val_brier"] <= 0.2, result.registered
    assert "val_brier" in result.registered.reason, result.registered.reason


def test_a_plugins_own_loss_trains_and_is_the_validation_loss(ray_session, tmp_path, monkeypatch):
    """model_plugin(loss=...): cross entropy plus 5 per row trains like cross entropy (the
    constant has no gradient), and val_loss is that loss, not the task's."""
    (tmp_path / "offset_models.py").write_text(
        "from torch import nn\n"
        "from torch.nn import functional as F\n"
        "from jobs.models import ZooParams\n"
        "from jobs.plugins import model_plugin\n\n"
        "def offset_loss(out, y):\n"
        "    return F.cross_entropy(out, y, reduction='none') + 5.0\n\n"
        "@model_plugin(ZooParams, loss=offset_loss)\n"
        "def build(params, shape):\n"
        "    return nn.Sequential(nn.Linear(shape.n_features, 32), nn.ReLU(),\n"
        "                         nn.Linear(32, shape.n_outputs))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = SPEC.format(
        name="offset", model="{type: 'offset_models:build'}", epochs=8,
        deepspeed="{zero_stage: 0}", store=store,
    )  # fmt: skip
    result = Client(show_worker_logs=False).run(write(tmp_path, "offset", text))
    assert result.status == "succeeded" and result.metrics["val_accuracy"] >= 0.9, result.metrics
    assert 5.0 < result.metrics["val_loss"] < 5.5 and result.metrics["train_loss"] > 5.0


RUNNING_MAX = '''\
import torch
from torch import nn


class RunningMax(nn.Module):
    """Each feature beside the running maximum of the features before it: torch.cummax,
    which ONNX has no translation for."""

    def __init__(self, n_features, width, n_outputs):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(2 * n_features, width), nn.Tanh(), nn.Linear(width, n_outputs)
        )

    def forward(self, x):
        return self.head(torch.cat([x, torch.cummax(x, dim=1).values], dim=1))


def build(params, shape):
    return RunningMax(shape.n_features, params.width, shape.n_outputs)
'''


def test_a_model_onnx_cannot_export_serves_in_pytorch_and_says_why(
    ray_session, tmp_path, monkeypatch, capsys
):
    """dynamic-int8 asked of a model with torch.cummax: registered, served in PyTorch float32
    (a torch.export program), the int8 step skipped with the reason, predictions right."""
    import requests
    from ray import serve

    from orchestrator.cli import main

    (tmp_path / "running_max.py").write_text(RUNNING_MAX)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = free_port()
    text = (
        "name: byo-cummax\n"
        "data: {source: sklearn://breast_cancer, seed: 0}\n"
        "model: {type: 'running_max:build', params: {width: 16}}\n"
        "train: {epochs: 10, batch_size: 64, workers: 1, optimizer: {lr: 0.003}}\n"
        f'tracking: {{tracking_uri: "{store}"}}\n'
        "register: {model_name: byo-cummax}\n"
        f"serve: {{name: cummax, port: {port}, quantization: dynamic-int8, "
        "cpus_per_replica: 0.25}\n"
    )
    wait_serve_stopped()
    try:
        result = Client(show_worker_logs=False).run(write(tmp_path, "cummax", text))
        assert result.status == "succeeded" and result.metrics["val_accuracy"] >= 0.9
        (variant,) = result.served.variants
        assert variant.quantization == "dynamic-int8"  # what was asked (the version's tag key)
        assert (variant.served_quantization, variant.runtime) == ("none", "torch")
        assert variant.fallback == "ONNX has no translation for aten.cummax"
        assert variant.artifact_path == "serving/dynamic-int8/model.pt2"
        assert variant.drop == 0 and variant.value == variant.fp32_value

        data = load_breast_cancer()
        body = {
            "inputs": [
                {
                    "name": "features",
                    "shape": [len(data.target), 30],
                    "datatype": "FP32",
                    "data": data.data.astype(np.float32).ravel().tolist(),
                }
            ]
        }
        base = f"http://127.0.0.1:{port}/v2/models/byo-cummax"
        assert requests.get(base, timeout=30).json()["platform"] == "pytorch"
        reply = requests.post(f"{base}/infer", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        (classes,) = [o for o in reply.json()["outputs"] if o["name"] == "class"]
        assert float(np.mean(np.array(classes["data"]) == data.target)) >= 0.9

        capsys.readouterr()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
        assert main(["models", "show", "byo-cummax"]) == 0
        shown = capsys.readouterr().out
        assert "served as dynamic-int8 (PyTorch float32: ONNX has no translation for " in shown
    finally:
        serve.shutdown()


SPARE_PART = '''\
from torch import nn


class WithSpare(nn.Module):
    """A user's module with a parameter its forward never uses."""

    def __init__(self, n_features, width, n_outputs):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_outputs)
        )
        self.spare = nn.Linear(3, 3)

    def forward(self, x):
        return self.body(x)


def build(params, shape):
    return WithSpare(shape.n_features, params.width, shape.n_outputs)
'''


def test_a_module_with_an_unused_parameter_trains_data_parallel_at_zero_0(
    ray_session, tmp_path, monkeypatch
):
    """ZeRO-0 all-reduces with DDP's reducer, which must be told that a user's module may
    leave parameters out of its forward (DeepSpeed's own all-reduce skipped them)."""
    (tmp_path / "spare_part.py").write_text(SPARE_PART)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = SPEC.format(
        name="spare",
        model="{type: 'spare_part:build', params: {width: 32}}",
        epochs=8,
        deepspeed="{zero_stage: 0}",
        store=f"sqlite:///{tmp_path / 'mlflow.db'}",
    ).replace("register: {model_name: byo-spare}\n", "")
    result = Client(show_worker_logs=False).run(write(tmp_path, "spare", text))
    assert result.status == "succeeded" and result.runner == "ray-train"
    assert result.metrics["val_accuracy"] >= 0.9, result.metrics
