"""The tune section: what a user writes, what is refused before anything runs, and why."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator import load_spec
from orchestrator.cli import main
from orchestrator.exceptions import SpecError
from tuning.space import decode, param_space
from tuning.study import concurrency_cap, trial_demand

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE = """\
name: tuned
data: {source: sklearn://digits}
model: {type: mlp, params: {hidden_sizes: [64]}}
train: {epochs: 4, batch_size: 64, workers: 2, resources_per_worker: {CPU: 0.5}}
"""


def write(tmp_path: Path, tune: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(BASE + "tune:\n" + textwrap.indent(textwrap.dedent(tune), "  "))
    return path


def test_digits_example_has_the_issue_search_space():
    spec = load_spec(EXAMPLES / "digits.yaml")
    tune = spec.tune
    assert tune.search.algorithm == "bayesian" and tune.early_stopping.type == "asha"
    assert tune.resolved_mode == "max" and tune.num_samples == 16
    assert set(tune.space) == {
        "train.optimizer.lr",
        "train.optimizer.weight_decay",
        "model.params.dropout",
        "model.params.hidden_sizes",
        "train.batch_size",
    }


def test_mode_defaults_to_the_metric_direction(tmp_path):
    spec = load_spec(
        write(tmp_path, "metric: val_loss\nspace:\n  train.optimizer.lr: {uniform: [0.001, 0.1]}\n")
    )
    assert spec.tune.resolved_mode == "min"


def test_unknown_path_is_named_with_its_line_and_closest_field(tmp_path):
    path = write(
        tmp_path,
        """\
        space:
          train.optimizer.lr: {loguniform: [0.0001, 0.01]}
          train.optimizer.weight_dacay: {loguniform: [0.00001, 0.1]}
        """,
    )
    with pytest.raises(SpecError, match="did you mean 'train.optimizer.weight_decay'") as err:
        load_spec(path)
    assert f"{path}:8: tune.space.train.optimizer.weight_dacay: no such field" in str(err.value)


def test_values_of_the_wrong_type_or_range_name_the_path(tmp_path):
    path = write(
        tmp_path,
        """\
        space:
          model.params.dropout: {uniform: [0.0, 1.5]}
          model.params.hidden_sizes: {choice: [[64], "wide"]}
          train.batch_size: {choice: [32, 63]}
        """,
    )
    with pytest.raises(SpecError) as err:
        load_spec(path)
    lines = str(err.value).splitlines()
    assert any("tune.space.model.params.dropout: value 1.5 is not valid" in x for x in lines)
    assert any("tune.space.model.params.hidden_sizes: value 'wide'" in x for x in lines)
    # 63 does not split over the 2 data-parallel workers: a cross-field rule of train
    assert any("tune.space.train.batch_size: value 63" in x and "divide" in x for x in lines)


def test_data_and_tracking_cannot_be_searched(tmp_path):
    path = write(tmp_path, "space:\n  data.validation_split: {uniform: [0.1, 0.3]}\n")
    with pytest.raises(SpecError, match="only model.\\* and train.\\* can be searched"):
        load_spec(path)


@pytest.mark.parametrize(
    ("source", "streaming", "cpu"),
    [
        ("sklearn://digits", "auto", 0.5),  # auto never streams a bundled set
        ("sklearn://digits", "true", 1.0),
        ("sklearn://digits", "false", 0.5),
        ("s3://bucket/rows/", "true", 0.5),  # files: the trial reads them itself
        ("/data/rows.parquet", "auto", 0.5),
    ],
)
def test_a_local_trial_that_ray_data_may_stream_is_charged_a_whole_cpu(
    tmp_path, source, streaming, cpu
):
    """Ray Data lists a read's files in a task of one whole CPU, inside the trial's group:
    a 0.5-CPU local trial on data Ray Data may stream holds 1 CPU, and is counted so.
    Files are read by the trial itself, in its own CPU."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"name: tuned\ndata: {{source: '{source}', streaming: {streaming}}}\n"
        "model: {type: mlp}\ntrain: {epochs: 2, resources_per_worker: {CPU: 0.5}}\n"
        "tune:\n  space: {train.optimizer.lr: {loguniform: [0.001, 0.01]}}\n"
    )
    spec = load_spec(path, check_data=False)
    sections = spec.model_dump(mode="json", include={"data", "model", "train"})
    assert trial_demand(spec.tune, sections) == {"CPU": cpu}
    assert concurrency_cap(trial_demand(spec.tune, sections), {"CPU": 2.0}) == int(2 / cpu)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lr: {loguniform: [0.0, 0.1]}", "loguniform: low must be > 0"),
        ("lr: {uniform: [0.1, 0.01]}", "low must be < high"),
        ("lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}", "exactly one distribution"),
        ("lr: {logunifrom: [0.1, 0.2]}", "did you mean 'loguniform'"),
    ],
)
def test_distributions_are_checked(tmp_path, space, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, f"space:\n  train.optimizer.{space}\n"))


def test_grid_needs_discrete_dimensions(tmp_path):
    path = write(
        tmp_path,
        "search: {algorithm: grid}\nspace:\n  train.optimizer.lr: {uniform: [0.001, 0.1]}\n",
    )
    with pytest.raises(SpecError, match="grid needs choice or int dimensions"):
        load_spec(path)


def test_metric_must_be_reported_for_the_task(tmp_path):
    path = write(
        tmp_path, "metric: val_rmse\nspace:\n  train.optimizer.lr: {uniform: [0.001, 0.1]}\n"
    )
    with pytest.raises(SpecError, match="val_rmse is not reported for classification"):
        load_spec(path)
    with pytest.raises(SpecError, match="metric 'accuracy' is not reported by the trainer"):
        load_spec(write(tmp_path, "metric: accuracy\nspace:\n  train.epochs: {int: [1, 3]}\n"))


def test_cli_validate_refuses_a_bad_space_without_a_traceback(tmp_path, capsys):
    path = write(tmp_path, "space:\n  train.optimizer.lrr: {uniform: [0.001, 0.1]}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tune.space.train.optimizer.lrr: no such field" in err
    assert "Traceback" not in err


def test_choice_values_travel_as_indices_and_decode_back():
    spec = load_spec(EXAMPLES / "digits.yaml")
    space = param_space(spec.tune)
    assert space["model.params.hidden_sizes"].categories == [0, 1, 2]
    values = decode(
        spec.tune,
        {"model.params.hidden_sizes": 2, "train.batch_size": 0, "train.optimizer.lr": 0.003},
    )
    assert values == {
        "model.params.hidden_sizes": [256, 128],
        "train.batch_size": 32,
        "train.optimizer.lr": 0.003,
    }


def test_trial_demand_caps_concurrency_by_cluster_resources(tmp_path):
    spec = load_spec(
        write(tmp_path, "space:\n  train.workers: {choice: [1, 2, 4]}\n"), check_data=False
    )
    sections = spec.model_dump(mode="json", include={"model", "train"})
    demand = trial_demand(spec.tune, sections)
    assert demand == {"CPU": 2.0}  # 4 workers x 0.5 CPU at most
    assert concurrency_cap(demand, {"CPU": 2.0, "memory": 1e9}) == 1
    assert concurrency_cap(demand, {"CPU": 7.0}) == 3
    assert concurrency_cap({"GPU": 1.0}, {"CPU": 8.0}) == 0


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("train.epochs: {int: [2, 8]}", "train.epochs is the study's time axis"),
        ("train.batch_size: {uniform: [16, 128]}", "value 57.44 is not valid here"),
        ("train.optimizer.lr: {quniform: [0.0, 0.5, 0.2]}", "multiples of q=0.2"),
        ("train.batch_size: {qlogint: [8, 256, 8]}", "qlogint with q > 1 is not supported"),
    ],
)
def test_spaces_that_would_fail_inside_a_trial_are_refused_up_front(tmp_path, space, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, f"space:\n  {space}\n"), check_data=False)


def test_trials_table_keeps_mixed_choice_values(tmp_path):
    from tuning.report import trials_table
    from tuning.study import TrialSummary

    spec = load_spec(
        write(
            tmp_path,
            "space:\n  train.deepspeed.gradient_clipping: {choice: [0.0, 1.0]}\n"
            "  model.params.hidden_sizes: {choice: [[64], [32, 16]]}\n",
        ),
        check_data=False,
    )
    trials = [
        TrialSummary(
            trial_id="a",
            status="completed",
            metric=0.9,
            params={
                "train.deepspeed.gradient_clipping": 1.0,
                "model.params.hidden_sizes": [32, 16],
            },
        ),
        TrialSummary(trial_id="b", status="failed", reason="boom", params={}),
    ]
    rows = trials_table(trials, spec.tune).to_pylist()
    assert rows[0]["param:train.deepspeed.gradient_clipping"] == 1.0
    assert rows[0]["param:model.params.hidden_sizes"] == "[32, 16]"
    assert rows[1]["status"] == "failed" and rows[1]["val_accuracy"] is None


def test_refit_takes_train_settings_and_a_bad_one_is_named(tmp_path, capsys):
    space = "space:\n  train.optimizer.lr: {loguniform: [0.0001, 0.01]}\n"
    good = load_spec(write(tmp_path, space + "refit: {workers: 4, deepspeed: {zero_stage: 2}}\n"))
    assert good.tune.refit == {"workers": 4, "deepspeed": {"zero_stage": 2}}
    # 64 rows a step do not split over 3 data-parallel workers
    path = write(tmp_path, space + "refit: {workers: 3}\n")
    with pytest.raises(SpecError, match=r"tune\.refit: .*batch_size \(64\) must divide evenly"):
        load_spec(path)
    typo = write(tmp_path, space + "refit: {worker: 2}\n")
    assert main(["validate", str(typo), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "tune.refit.worker: Extra inputs are not permitted" in err
    assert "Traceback" not in err
