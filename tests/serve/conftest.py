"""Serving fixtures: real models trained in-process in seconds, logged and registered in the
test's MLflow store exactly as a pipeline run does (spec.yaml, data_info.json, pt2 model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from jobs.data import example_rows, prepare
from jobs.export import InferenceModel
from jobs.tracking import RunTracker
from orchestrator.spec import PipelineSpec
from serve.registry import Registry


def quick_fit(spec: PipelineSpec, epochs: int = 80, seed: int = 0) -> InferenceModel:
    """Full-batch Adam on the spec's data: a real, accurate model without Ray Train."""
    torch.manual_seed(seed)
    data = prepare(spec.data)
    model = InferenceModel.build(spec.model, data.info)
    x, y = torch.from_numpy(data.x_train).float(), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.net.parameters(), lr=0.01)
    classification = data.info.task == "classification"
    for _ in range(epochs):
        opt.zero_grad()
        out = model.net(x)
        loss = (
            torch.nn.functional.cross_entropy(out, y.long())
            if classification
            else torch.nn.functional.mse_loss(out.squeeze(-1), y.float())
        )
        loss.backward()
        opt.step()
    return model.eval()


def register_quick_model(
    spec: PipelineSpec, *, alias: str | None = "champion", epochs: int = 80, seed: int = 0
) -> str:
    """Train, log and register like `orch run` does; returns the version number."""
    uri = spec.tracking.tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    data = prepare(spec.data)
    model = quick_fit(spec, epochs, seed)
    tracker = RunTracker(uri, spec.experiment, artifact_root=str(Path(uri[10:]).parent / "art"))
    with tracker:
        tracker.start(f"{spec.name}-quick", tags={"orch.data_fingerprint": data.info.fingerprint})
        tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json")), "spec.yaml")
        model_uri = tracker.log_model(model, data.info, example_rows(data, 5))
    registry = Registry(uri)
    version = registry.register(
        model_uri,
        spec.registered_model_name,
        {"orch.data_fingerprint": data.info.fingerprint, "orch.pipeline": spec.name},
        {},
    )
    if alias:
        registry.promote(spec.registered_model_name, version, alias)
    return version


def pipeline(**sections) -> PipelineSpec:
    base = {
        "name": "digits-serve",
        "data": {"source": "sklearn://digits", "task": "classification"},
        "model": {"type": "mlp", "params": {"hidden_sizes": [64]}},
        "register": {"model_name": "digits-classifier"},
        "serve": {"name": "digits"},
    }
    return PipelineSpec.model_validate(base | sections)


def iris_pipeline(name: str, tracking_uri: str, port: int, **serve) -> PipelineSpec:
    """A small iris MLP registered and served under ``name`` (the serving tests' second data)."""
    return pipeline(
        name=name,
        data={"source": "sklearn://iris"},
        model={"type": "mlp", "params": {"hidden_sizes": [16]}},
        tracking={"tracking_uri": tracking_uri},
        register={"model_name": name},
        serve={"name": name, "cpus_per_replica": 0.25, "port": port} | serve,
    )


@pytest.fixture
def digits_spec() -> PipelineSpec:
    return pipeline()
