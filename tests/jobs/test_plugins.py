"""Bring your own model: a name from an installed package (entry point ``orch.models``) or an
import path ``package.module:function``; the factory returns an nn.Module or layers. Every
way a plugin can be wrong is one line naming it and the fix, exit 2, before anything runs.

The example plugin (examples/plugin) is installed by ``make install``."""

from __future__ import annotations

import textwrap
from itertools import count

import pytest
import torch
from torch import nn

from jobs.models import DataShape, build_layers, build_network, count_layers, get_entry
from jobs.plugins import installed_names
from orchestrator.cli import main
from tests.helpers import write

SHAPE = DataShape(n_features=30, n_outputs=2)
_unique = count()


def spec(model: str, train: str = "{epochs: 1}") -> str:
    return f"name: byo\ndata: {{source: sklearn://breast_cancer}}\nmodel: {model}\ntrain: {train}\n"


def validate(tmp_path, text: str, capsys, *args: str) -> tuple[int, str]:
    code = main(["validate", str(write(tmp_path, "byo", text)), *args])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def user_module(tmp_path, monkeypatch, source: str) -> str:
    """A module of the user's own on sys.path (as the embedded default and a working_dir
    have it); a fresh name per test, since a process imports a module once."""
    name = f"user_models_{next(_unique)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_the_example_plugins_models_are_installed_by_name():
    assert {"gated-mlp", "residual-mlp"} <= set(installed_names())
    source = get_entry("residual-mlp").source
    assert source.kind == "entry point"
    assert source.describe() == (
        "entry point orch_example_plugin.models:residual_mlp from orch-example-plugin 0.1.0"
    )
    assert get_entry("mlp").source is None  # the zoo's own


def test_a_plugin_module_trains_data_parallel_but_is_refused_a_pipeline(tmp_path, capsys):
    net = build_network("residual-mlp", {"width": 16, "blocks": 3}, SHAPE)
    assert type(net).__name__ == "ResidualMLP" and len(net.blocks) == 3
    assert net(torch.randn(4, 30)).shape == (4, 2)
    code, out = validate(
        tmp_path,
        spec("{type: residual-mlp}", "{workers: 2, deepspeed: {pipeline_stages: 2}}"),
        capsys,
        "--no-data",
    )
    assert code == 2
    assert "'residual-mlp' is one ResidualMLP module, which DeepSpeed cannot split" in out
    assert "pipeline_stages: 1, or return a list of layers" in out


def test_a_plugin_returning_layers_can_be_split_into_stages():
    layers = build_layers("gated-mlp", {"hidden_sizes": [16, 8]}, SHAPE)
    assert count_layers("gated-mlp", {"hidden_sizes": [16, 8]}) == len(layers) == 3
    # as one module it is nn.Sequential over the same layers: the same state-dict keys
    net = build_network("gated-mlp", {"hidden_sizes": [16, 8]}, SHAPE)
    assert isinstance(net, nn.Sequential) and "0.gate.weight" in net.state_dict()


def test_a_plugins_params_are_checked_with_did_you_mean_and_a_line(tmp_path, capsys):
    code, out = validate(
        tmp_path, spec("{type: residual-mlp, params: {widht: 32}}"), capsys, "--no-data"
    )
    assert code == 2 and "byo.yaml:3" in out and "did you mean 'width'?" in out
    code, out = validate(tmp_path, spec("{type: residual-mlp, params: {blocks: 0}}"), capsys)
    assert code == 2 and "model.params.blocks" in out and "greater than or equal to 1" in out
    assert "Traceback" not in out


def test_an_unknown_type_suggests_from_the_zoo_and_the_installed_plugins(tmp_path, capsys):
    code, out = validate(tmp_path, spec("{type: residul-mlp}"), capsys, "--no-data")
    assert code == 2 and "did you mean 'residual-mlp'?" in out
    assert "cnn, mlp, transformer, gated-mlp, residual-mlp" in out
    code, out = validate(tmp_path, spec("{type: 'not a path:x y'}"), capsys, "--no-data")
    assert code == 2 and "nor an import path package.module:function" in out


def test_an_import_path_names_any_nn_module_factory(tmp_path, monkeypatch, capsys):
    module = user_module(
        tmp_path,
        monkeypatch,
        """
        from torch import nn

        def build(params, shape):  # undecorated: params are free, read as attributes
            return nn.Sequential(nn.Linear(shape.n_features, params.width), nn.ReLU(),
                                 nn.Linear(params.width, shape.n_outputs))
        """,
    )
    net = build_network(f"{module}:build", {"width": 7}, SHAPE)
    assert net[0].out_features == 7
    assert get_entry(f"{module}:build").source.describe() == f"import path {module}:build"
    text = spec(f"{{type: '{module}:build', params: {{width: 7}}}}")
    code, out = validate(tmp_path, text, capsys)
    assert code == 0 and f"ok: byo: {module}:build on sklearn://breast_cancer" in out


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "def build(params, shape):\n    raise RuntimeError('no GPU here\\nsecond line')\n",
            "its factory raised RuntimeError: no GPU here; check model.params",
        ),
        (
            "def build(params, shape):\n    return 'a string'\n",
            "its factory returned str, not an nn.Module or a non-empty list of nn.Module layers",
        ),
        ("build = 3\n", "is a int, not a factory"),
        ("import not_a_module_anywhere\n", "cannot import {module} (ModuleNotFoundError: No"),
        ("def other(params, shape):\n    pass\n", "module {module} has no 'build'"),
    ],
)
def test_a_broken_factory_is_one_line_naming_it_and_exit_2(
    tmp_path, monkeypatch, capsys, body, expected
):
    module = user_module(tmp_path, monkeypatch, body)
    code, out = validate(tmp_path, spec(f"{{type: '{module}:build'}}"), capsys)
    assert code == 2, out
    assert expected.format(module=module) in out
    assert f"{module}:build" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) <= 2  # the spec's line, then the one-line reason


def test_an_import_path_is_not_imported_to_parse_a_spec(tmp_path, monkeypatch, capsys):
    """The queue parses a member's spec before refusing an import path: parsing must not
    run the code it names."""
    marker = tmp_path / "imported"
    module = user_module(
        tmp_path, monkeypatch, f"open({str(marker)!r}, 'w').close()\ndef build(p, s): pass\n"
    )
    code, out = validate(tmp_path, spec(f"{{type: '{module}:build'}}"), capsys, "--no-data")
    assert code == 0 and not marker.exists()


def test_a_plugin_that_fails_to_import_is_named_with_its_package(tmp_path, monkeypatch, capsys):
    """An installed distribution whose entry point's module raises on import."""
    name = f"broken_plugin_{next(_unique)}"
    dist = tmp_path / f"{name}-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(f"[orch.models]\n{name} = {name}:build\n")
    (tmp_path / f"{name}.py").write_text("raise ImportError('needs libfoo.so.3')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = validate(tmp_path, spec(f"{{type: {name}}}"), capsys, "--no-data")
    assert code == 2
    assert f"model plugin '{name}' ({name}:build, package {name} 1.2) failed to import" in out
    assert "ImportError: needs libfoo.so.3; fix or reinstall that package" in out


TUNED = (
    "tune: {{metric: {metric}, num_samples: 2, "
    "space: {{train.optimizer.lr: {{choice: [0.01]}}}}}}\n"
)


def test_a_plugins_own_metric_is_named_like_the_trainers_and_takes_its_direction(tmp_path, capsys):
    from orchestrator.loader import load_spec

    path = write(tmp_path, "ok", spec("{type: residual-mlp}") + TUNED.format(metric="val_brier"))
    loaded = load_spec(path, check_data=False)
    assert loaded.tune.resolved_mode == "min"  # the plugin's PluginMetric(mode="min")
    assert get_entry("residual-mlp").metric_modes() == {"val_brier": "min"}

    # a metric the model does not report: one line naming the field and what it reports
    code, out = validate(
        tmp_path, spec("{type: residual-mlp}") + TUNED.format(metric="val_f1"), capsys
    )
    assert code == 2 and "Traceback" not in out
    assert "tune.metric: 'val_f1' is not reported by model 'residual-mlp'" in out
    assert "val_accuracy" in out and "val_brier" in out
    # ...nor another model's metric: the zoo's mlp has no val_brier
    promote = "register: {promote_if: {metric: val_brier, max: 0.1}}\n"
    code, out = validate(tmp_path, spec("{type: mlp}") + promote, capsys)
    assert code == 2 and "register.promote_if.metric: 'val_brier' is not reported by" in out


def test_an_import_paths_metric_is_checked_once_it_is_imported(tmp_path, monkeypatch, capsys):
    name = user_module(
        tmp_path,
        monkeypatch,
        """
        from torch import nn
        from jobs.plugins import PluginMetric, model_plugin
        from jobs.models import ZooParams

        def margin(outputs, targets):
            return outputs.max(dim=-1).values - outputs.min(dim=-1).values

        @model_plugin(ZooParams, metrics={"margin": PluginMetric(margin, mode="max")})
        def build(params, shape):
            return nn.Linear(shape.n_features, shape.n_outputs)
        """,
    )
    good = spec(f"{{type: '{name}:build'}}") + TUNED.format(metric="val_margin")
    assert validate(tmp_path, good, capsys)[0] == 0
    bad = spec(f"{{type: '{name}:build'}}") + TUNED.format(metric="val_marjin")
    code, out = validate(tmp_path, bad, capsys)
    assert code == 2 and "tune.metric: 'val_marjin' is not reported by model" in out
    assert "val_margin" in out


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ('{"accuracy": PluginMetric(f)}', "would shadow the trainer's val_accuracy"),
        ('{"Top 1": PluginMetric(f)}', "plugin metric name 'Top 1'"),
        ('{"top1": f}', "give a jobs.plugins.PluginMetric"),
    ],
)
def test_a_badly_declared_metric_is_the_plugins_import_error(
    tmp_path, monkeypatch, capsys, metrics, message
):
    name = user_module(
        tmp_path,
        monkeypatch,
        f"""
        from torch import nn
        from jobs.plugins import PluginMetric, model_plugin
        from jobs.models import ZooParams

        def f(outputs, targets):
            return outputs[:, 0]

        @model_plugin(ZooParams, metrics={metrics})
        def build(params, shape):
            return nn.Linear(shape.n_features, shape.n_outputs)
        """,
    )
    code, out = validate(tmp_path, spec(f"{{type: '{name}:build'}}"), capsys)
    assert code == 2 and message in out and "Traceback" not in out
