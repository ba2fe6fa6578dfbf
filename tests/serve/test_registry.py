"""The model registry: every run registers a version; the alias moves only by the policy."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import mlflow
import numpy as np
import pytest
import torch

from jobs.data import prepare
from jobs.export import InferenceModel
from jobs.spec import DataSpec, ModelSpec
from jobs.tracking import RunTracker
from orchestrator import load_spec
from orchestrator.cli import main
from orchestrator.stages import run_registration
from serve.registry import Registry, RegistryError, decide
from serve.spec import PromoteIf


def test_policy_threshold_and_better_than_current():
    policy = PromoteIf(min=0.9)
    assert not decide(policy, "val_accuracy", "max", 0.85, None).promote
    assert "below promote_if.min 0.9" in decide(policy, "val_accuracy", "max", 0.85, None).reason
    assert decide(policy, "val_accuracy", "max", 0.95, None).promote
    worse = decide(policy, "val_accuracy", "max", 0.93, ("2", 0.95))
    assert not worse.promote and "not better than version 2's 0.95" in worse.reason
    assert decide(policy, "val_accuracy", "max", 0.96, ("2", 0.95)).promote
    assert decide(PromoteIf(better_than_current=False), "val_accuracy", "max", 0.5, ("2", 0.95))
    # losses: lower is better
    assert decide(PromoteIf(max=0.5), "val_rmse", "min", 0.3, ("1", 0.4)).promote
    assert not decide(PromoteIf(), "val_rmse", "min", 0.45, ("1", 0.4)).promote


class Logged(NamedTuple):
    run_id: str
    model_uri: str
    inputs: np.ndarray  # raw feature rows
    outputs: np.ndarray  # what the model answered for them before it was logged


@pytest.fixture
def logged_model(tmp_path) -> Logged:
    """A small real model logged to the test's MLflow store (no Ray needed)."""
    data = prepare(DataSpec(source="sklearn://iris"))
    model = InferenceModel.build(ModelSpec(type="mlp", params={"hidden_sizes": [8]}), data.info)
    tracker = RunTracker(
        os.environ["MLFLOW_TRACKING_URI"], "iris", artifact_root=str(tmp_path / "art")
    )
    with tracker:
        run_id = tracker.start(
            "iris-run",
            tags={"orch.spec_hash": "abc", "orch.ray_job_id": "01", "orch.user": "alice",
                  "orch.team": "vision"},
        )  # fmt: skip
        example = (data.x_val[:3] * data.info.feature_std + data.info.feature_mean).astype(
            np.float32
        )
        model_uri = tracker.log_model(model, data.info, example)
    with torch.no_grad():
        outputs = model.eval()(torch.from_numpy(example)).numpy()
    return Logged(run_id, model_uri, example, outputs)


def iris_spec(tmp_path, policy: str = "{min: 0.5}"):
    path = tmp_path / "iris.yaml"
    path.write_text(
        "name: iris-mlp\n"
        "data: {source: sklearn://iris}\n"
        "model: {type: mlp, params: {hidden_sizes: [8]}}\n"
        f"register: {{model_name: iris-classifier, alias: champion, promote_if: {policy}}}\n"
    )
    return load_spec(path)


def register(spec, logged: Logged, accuracy: float):
    return run_registration(
        spec,
        run_id=logged.run_id,
        model_uri=logged.model_uri,
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        metrics={"val_accuracy": accuracy, "val_loss": 1 - accuracy},
        task="classification",
    )


def test_versions_are_registered_with_lineage_and_promoted_by_policy(tmp_path, logged_model):
    spec = iris_spec(tmp_path)
    first = register(spec, logged_model, 0.90)
    assert (first.version, first.promoted) == ("1", True)
    worse = register(spec, logged_model, 0.80)
    assert (worse.version, worse.promoted) == ("2", False)
    assert worse.reason == "val_accuracy 0.8 is not better than version 1's 0.9 (max is better)"
    low = register(spec, logged_model, 0.40)
    assert not low.promoted and "below promote_if.min 0.5" in low.reason
    better = register(spec, logged_model, 0.95)
    assert better.promoted and better.version == "4"

    registry = Registry(os.environ["MLFLOW_TRACKING_URI"])
    assert registry.alias_holder("iris-classifier", "champion") == "4"
    shown = registry.show("iris-classifier")
    assert [v.version for v in shown.versions] == ["1", "2", "3", "4"]
    assert shown.aliases == {"champion": "4"}
    v2 = shown.versions[1]
    assert v2.metrics["val_accuracy"] == pytest.approx(0.80)
    assert v2.tags["orch.mlflow_run_id"] == logged_model.run_id
    assert v2.tags["orch.pipeline"] == "iris-mlp"
    assert v2.tags["orch.spec_hash"] == "abc" and v2.tags["orch.ray_job_id"] == "01"
    assert (v2.tags["orch.user"], v2.tags["orch.team"]) == ("alice", "vision")
    # the registered version is the logged model: it loads back and answers as it did
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    loaded = mlflow.pytorch.load_model("models:/iris-classifier@champion")
    with torch.no_grad():
        answers = loaded(torch.from_numpy(logged_model.inputs)).numpy()
    np.testing.assert_allclose(answers, logged_model.outputs, rtol=1e-5, atol=1e-6)


def test_cli_lists_shows_promotes_and_rolls_back(tmp_path, logged_model, capsys):
    spec = iris_spec(tmp_path)
    register(spec, logged_model, 0.90)
    register(spec, logged_model, 0.95)  # v2 takes @champion

    assert main(["models", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed == {
        "name": "iris-classifier",
        "versions": 2,
        "latest": 2,
        "aliases": {"champion": "2"},
    }

    assert main(["models", "rollback", "iris-classifier"]) == 0
    assert "version 2 -> version 1" in capsys.readouterr().out
    assert (
        Registry(os.environ["MLFLOW_TRACKING_URI"]).alias_holder("iris-classifier", "champion")
        == "1"
    )

    assert main(["models", "promote", "iris-classifier", "2"]) == 0
    assert main(["models", "show", "iris-classifier"]) == 0
    out = capsys.readouterr().out
    assert "v2  @champion" in out and "val_accuracy=0.95" in out

    # mistakes: one line, non-zero exit, no traceback
    assert main(["models", "show", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "no registered model 'no-such-model'; registered: iris-classifier" in err
    assert main(["models", "promote", "iris-classifier", "9"]) == 1
    assert "iris-classifier has no version '9'" in capsys.readouterr().err
    assert main(["models", "rollback", "iris-classifier"]) == 0  # back to v1
    assert "version 2 -> version 1" in capsys.readouterr().out
    from orchestrator import Client  # the SDK: the same, typed

    assert main(["models", "promote", "iris-classifier", "2"]) == 0
    moved = Client().rollback("iris-classifier")
    assert (moved.alias, moved.from_version, moved.to_version) == ("champion", "2", "1")
    assert Client().show_model("iris-classifier").aliases == {"champion": "1"}
    with pytest.raises(RegistryError, match="no earlier version held this alias"):
        Registry(os.environ["MLFLOW_TRACKING_URI"]).rollback("iris-classifier", "champion")


def test_promotion_metric_must_be_a_trainer_metric(tmp_path):
    from orchestrator.exceptions import SpecError

    with pytest.raises(SpecError, match="register.promote_if.metric 'accuracy' is not reported"):
        iris_spec(tmp_path, "{metric: accuracy}")
