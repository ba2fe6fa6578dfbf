"""A spec is checked before anything starts: errors name file:line, the field and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import PipelineSpec, SpecError, load_spec
from orchestrator.cli import main
from tests.conftest import EXAMPLES
from tuning.spec import refit_train

BASE = """\
name: t
data:
  source: sklearn://digits
model:
  type: mlp
  params: {hidden_sizes: [32]}
train:
  epochs: 2
  batch_size: 64
  workers: 2
"""


def spec_file(tmp_path, text: str, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_example_is_valid():
    spec = load_spec(EXAMPLES / "digits.yaml")
    assert isinstance(spec, PipelineSpec)
    assert spec.train.deepspeed.zero_stage == 2
    # single-worker trials on the local runner, then the winner on 2 data-parallel workers
    assert (spec.train.workers, spec.train.resolved_runner) == (1, "local")
    refit = refit_train(spec.train.model_dump(mode="json"), spec.tune.refit)
    assert (refit.data_parallel_degree, refit.resolved_runner) == (2, "ray-train")
    assert refit.deepspeed.zero_stage == 2
    assert spec.experiment == "digits"


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = spec_file(tmp_path, BASE.replace("  epochs: 2", "  epoch: 2"))
    with pytest.raises(
        SpecError,
        match=r"p\.yaml:8: train\.epoch: unknown key 'epoch'\. "
        r"Instead of 'epoch', did you mean 'epochs'\?",
    ):
        load_spec(path)


def test_unknown_model_param_suggests(tmp_path):
    path = spec_file(tmp_path, BASE.replace("hidden_sizes", "hidden_size"))
    with pytest.raises(
        SpecError,
        match=r":6: model\.params\.hidden_size: unknown key .*"
        r"did you mean 'hidden_sizes'",
    ):
        load_spec(path)


def test_unknown_model_type_lists_choices(tmp_path):
    path = spec_file(tmp_path, BASE.replace("type: mlp", "type: resnet"))
    with pytest.raises(
        SpecError,
        match=r":5: model\.type: unknown model type 'resnet'; "
        r"available: cnn, mlp, transformer",
    ):
        load_spec(path)


def test_workers_must_divide_into_stages(tmp_path):
    text = BASE.replace(
        "  workers: 2", "  workers: 3\n  deepspeed: {pipeline_stages: 2, zero_stage: 1}"
    )
    with pytest.raises(
        SpecError,
        match=r"workers \(3\) must be a multiple of "
        r"deepspeed\.pipeline_stages \(2\)",
    ):
        load_spec(spec_file(tmp_path, text))


def test_pipeline_cannot_exceed_model_layers(tmp_path):
    # mlp with one hidden layer = 2 pipeline layers
    text = BASE.replace("  workers: 2", "  workers: 4\n  deepspeed: {pipeline_stages: 4}")
    with pytest.raises(SpecError, match=r"pipeline_stages=4 but model 'mlp' has only 2 layers"):
        load_spec(spec_file(tmp_path, text))


def test_zero3_with_pipeline_is_refused(tmp_path):
    text = BASE.replace(
        "  workers: 2", "  workers: 2\n  deepspeed: {pipeline_stages: 2, zero_stage: 3}"
    )
    with pytest.raises(SpecError, match=r"train\.deepspeed: .*needs zero_stage 0 or 1"):
        load_spec(spec_file(tmp_path, text))


def test_fp16_on_cpu_is_refused_with_fix(tmp_path):
    text = BASE.replace("  workers: 2", "  workers: 2\n  deepspeed: {precision: fp16}")
    with pytest.raises(SpecError, match=r"fp16 needs GPUs.*use precision: bf16 or fp32"):
        load_spec(spec_file(tmp_path, text))
    gpu = text.replace("  workers: 2\n", "  workers: 2\n  resources_per_worker: {CPU: 1, GPU: 1}\n")
    assert load_spec(spec_file(tmp_path, gpu, "gpu.yaml")).train.deepspeed.precision == "fp16"


def test_local_runner_is_refused_for_several_workers_or_stages(tmp_path, capsys):
    text = BASE.replace("  workers: 2", "  workers: 2\n  runner: local")
    with pytest.raises(
        SpecError, match=r"train: .*runner local runs one worker.*workers=2.*use runner: ray-train"
    ):
        load_spec(spec_file(tmp_path, text))
    assert main(["validate", str(spec_file(tmp_path, text)), "--no-data"]) == 2
    assert "runner local runs one worker" in capsys.readouterr().err
    one = load_spec(spec_file(tmp_path, BASE.replace("  workers: 2", "  workers: 1"), "one.yaml"))
    assert (one.train.runner, one.train.resolved_runner) == ("auto", "local")
    assert load_spec(spec_file(tmp_path, BASE, "two.yaml")).train.resolved_runner == "ray-train"


def test_batch_size_must_split_over_ranks(tmp_path):
    with pytest.raises(SpecError, match=r"batch_size \(63\) must divide evenly"):
        load_spec(spec_file(tmp_path, BASE.replace("batch_size: 64", "batch_size: 63")))


def test_missing_data_file(tmp_path):
    path = spec_file(tmp_path, BASE.replace("sklearn://digits", "nowhere/data.parquet"))
    with pytest.raises(SpecError, match=r":3: data\.source: nowhere/data\.parquet does not exist"):
        load_spec(path)
    assert load_spec(path, check_data=False).data.source == "nowhere/data.parquet"


def _parquet(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table(
        {"a": rng.normal(size=20), "b": rng.normal(size=20), "y": rng.integers(0, 2, 20)}
    )
    pq.write_table(table, tmp_path / "d.parquet")
    return tmp_path / "d.parquet"


def test_bad_label_column_lists_columns(tmp_path):
    data = _parquet(tmp_path)
    text = BASE.replace("sklearn://digits", str(data)).replace(
        "  source:", "  label: label\n  source:"
    )
    with pytest.raises(
        SpecError,
        match=r":3: data\.label: label column 'label' is not in the "
        r"data; columns are: a, b, y",
    ):
        load_spec(spec_file(tmp_path, text))


def test_bad_feature_column(tmp_path):
    data = _parquet(tmp_path)
    text = BASE.replace("sklearn://digits", str(data)).replace(
        "  source:", "  label: y\n  features: [a, c]\n  source:"
    )
    with pytest.raises(SpecError, match=r"data\.features: unknown feature column\(s\) \['c'\]"):
        load_spec(spec_file(tmp_path, text))


def test_cnn_image_shape_must_match_features(tmp_path):
    text = BASE.replace("type: mlp", "type: cnn").replace(
        "{hidden_sizes: [32]}", "{channels: [4], image_shape: [1, 7, 7]}"
    )
    with pytest.raises(
        SpecError,
        match=r"model\.params: image_shape \[1, 7, 7\] holds 49 values "
        r"but the data has 64 features",
    ):
        load_spec(spec_file(tmp_path, text))


def test_yaml_syntax_error_names_line(tmp_path):
    path = spec_file(tmp_path, BASE.replace("  epochs: 2", "  epochs: [2"))
    with pytest.raises(SpecError, match=r"p\.yaml:\d+: invalid YAML"):
        load_spec(path)


def test_missing_required_section(tmp_path):
    path = spec_file(tmp_path, "name: t\nmodel: {type: mlp}\n")
    with pytest.raises(SpecError, match=r"data: required key 'data' is missing"):
        load_spec(path)


def test_cli_validate_bad_file_exits_2_without_traceback(tmp_path):
    path = spec_file(tmp_path, BASE.replace("  epochs: 2", "  epoch: 2"))
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "did you mean 'epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_validate_ok(capsys):
    assert main(["validate", str(EXAMPLES / "digits.yaml")]) == 0
    assert "ok: digits-mlp" in capsys.readouterr().out


def test_cli_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    assert "the following arguments are required: spec" in capsys.readouterr().err


def test_schema_lists_sections_and_field_docs(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"name", "data", "model", "train", "tracking"}
    deepspeed = schema["$defs"]["DeepSpeedSpec"]["properties"]
    assert "ZeRO stage" in deepspeed["zero_stage"]["description"]
    assert schema["$defs"]["TrainSpec"]["additionalProperties"] is False


def test_run_display_prints_warnings_and_resume():
    import io

    from rich.console import Console

    from jobs.events import EpochEnded, TrainingWarning, WorkerStarted
    from orchestrator.events import StageStarted
    from orchestrator.progress import RunDisplay

    out = io.StringIO()
    display = RunDisplay(Console(file=out, width=200))
    display(TrainingWarning("bf16 is slow here"))
    display(
        WorkerStarted(
            rank=0,
            runner="local",
            node_id="n",
            pid=1,
            start_epoch=4,
            epochs=9,
            resumed_from_epoch=3,
        )
    )
    display(StageStarted("train", mlflow_run_id="abc", epochs=2))
    display(
        EpochEnded(metrics={"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9}, checkpointed=True)
    )
    display.close()
    text = out.getvalue()
    assert "warning: bf16 is slow here" in text
    assert "resuming from the checkpoint of epoch 3" in text
    assert "MLflow run abc" in text
    assert "val_accuracy=0.9" in text


def test_cli_serve_down_names_what_is_missing(tmp_path, capsys):
    no_serve = tmp_path / "train-only.yaml"
    no_serve.write_text(
        "name: train-only\ndata: {source: sklearn://iris}\n"
        "model: {type: mlp, params: {hidden_sizes: [16]}}\n"
    )
    assert main(["serve", str(no_serve), "--down"]) == 2
    assert "train-only has no serve section" in capsys.readouterr().err
    both = ["serve", str(EXAMPLES / "digits.yaml"), "--down", "--emit-config", "x.yaml"]
    assert main(both) == 2
    assert "--down and --emit-config do not go together" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()
