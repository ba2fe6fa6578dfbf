"""Quantized variants: built from the registry, measured on the validation split, gated, and
kept on the model version; `orch serve --emit-config` writes what `serve deploy` accepts."""

from __future__ import annotations

import os

import mlflow
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.serving import build_app_config
from serve.records import VariantReport
from serve.registry import Registry
from serve.variant import VARIANT_TAG, GateError, check_gate
from tests.serve.conftest import pipeline, register_quick_model


def write_spec(tmp_path, spec) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    return str(path)


@pytest.mark.parametrize("quantization", ["none", "dynamic-int8", "static-int8", "bf16"])
def test_each_quantization_is_measured_and_logged_on_the_version(quantization, capsys):
    spec = pipeline(serve={"name": "digits", "quantization": quantization})
    version = register_quick_model(spec)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    config, (report,) = build_app_config(spec, uri, lambda event: None)

    assert report.fp32_value > 0.93  # a real digits model
    assert report.drop <= 0.01 and abs(report.value - report.fp32_value) <= 0.01
    assert report.latency_ms_batch_1 > 0 and report.latency_ms_max_batch > 0
    if quantization in ("dynamic-int8", "static-int8"):
        assert report.size_bytes < 0.8 * report.fp32_size_bytes  # int8 weights (fp32 = 4 B each)
    assert report.runtime == ("torch" if quantization == "bf16" else "onnxruntime")
    # on the model version: its report tag, and the file on the version's run
    tags = Registry(uri).version_tags("digits-classifier", version)
    assert VariantReport.model_validate_json(tags[VARIANT_TAG + quantization]) == report
    files = [
        f.path
        for f in mlflow.MlflowClient(uri).list_artifacts(report.run_id, f"serving/{quantization}")
    ]
    assert files == [report.artifact_path]
    assert config.models[0].version == version and config.models[0].quantization == quantization
    # a second deploy of the same version reuses the measured variant
    _, (again,) = build_app_config(spec, uri, lambda event: None)
    assert again == report
    capsys.readouterr()
    assert main(["models", "show", "digits-classifier"]) == 0
    assert f"served as {quantization}: val_accuracy {report.value:.4f}" in capsys.readouterr().out


def test_gate_stops_a_deploy_that_loses_accuracy(tmp_path, capsys):
    spec = pipeline(serve={"name": "digits", "quantization": "dynamic-int8"})
    version = register_quick_model(spec)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    _, (report,) = build_app_config(spec, uri, lambda event: None)
    lossy = report.model_copy(update={"value": report.fp32_value - 0.05, "drop": 0.05})
    with pytest.raises(GateError, match=r"accuracy drop 0.0500 exceeds serve.max_accuracy_drop"):
        check_gate(lossy, 0.01)
    check_gate(lossy, 0.06)
    # the CLI: a recorded 5-point drop stops the deploy with one clear line
    Registry(uri).set_version_tags(
        "digits-classifier", version, {VARIANT_TAG + "dynamic-int8": lossy.model_dump_json()}
    )
    code = main(["serve", write_spec(tmp_path, spec), "--emit-config", str(tmp_path / "s.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    assert "exceeds serve.max_accuracy_drop 0.01. Deploy stopped" in err
    assert "Traceback" not in err and not (tmp_path / "s.yaml").exists()


def test_emit_config_is_a_valid_serve_deploy_config(tmp_path, capsys):
    from ray.serve.schema import ServeDeploySchema

    spec = pipeline(serve={"name": "digits", "quantization": "dynamic-int8"})
    version = register_quick_model(spec)
    out = tmp_path / "serve.yaml"
    assert main(["serve", write_spec(tmp_path, spec), "--emit-config", str(out)]) == 0
    assert f"serve deploy {out}" in capsys.readouterr().out
    config = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    apps = {app.name: app for app in config.applications}
    assert set(apps) == {"digits", "orch-v2"}
    assert apps["digits"].route_prefix == "/digits"
    assert apps["digits"].import_path == "serve.app:build_app"
    assert apps["digits"].args["models"][0]["version"] == version
    assert apps["orch-v2"].args == {"models": {"digits-classifier": "digits"}}
    assert config.http_options.host == "127.0.0.1"


def test_serving_an_unknown_alias_or_other_data_is_refused(tmp_path, capsys):
    spec = pipeline(serve={"name": "digits", "model": "models:/digits-classifier@staging"})
    register_quick_model(spec)
    assert main(["serve", write_spec(tmp_path, spec), "--emit-config", "x.yaml"]) == 2
    assert "no version of digits-classifier holds alias 'staging'" in capsys.readouterr().err
    wine = pipeline(
        data={"source": "sklearn://wine", "task": "classification"},
        serve={"name": "wine", "model": "models:/digits-classifier@champion"},
    )
    assert main(["serve", write_spec(tmp_path, wine), "--emit-config", "x.yaml"]) == 2
    assert "was trained on other data than this pipeline's data" in capsys.readouterr().err
