"""`orch validate` and `orch schema` answer at editor speed: neither imports torch nor Ray.

Each command runs in a fresh Python whose wrapper writes every module it imported to a
file at exit, as an editor's save hook would run it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# argv: <modules file> <orch arguments...>; runs `python -m orchestrator <arguments>`.
WRAPPER = textwrap.dedent(
    """\
    import atexit, runpy, sys
    out = sys.argv[1]
    atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
    sys.argv = ["orchestrator", *sys.argv[2:]]
    runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
    """
)
HEAVY = ("torch", "ray", "deepspeed", "mlflow")


def orch(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``orch <args>`` in a fresh Python; returns its result and the modules it imported."""
    modules_file = tmp_path / "modules.txt"
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(modules_file), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, set(modules_file.read_text().split())


def heavy_imports(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def csv_spec(tmp_path, n_features: int, model: str) -> str:
    data = tmp_path / "data.csv"
    header = ",".join(f"x{i}" for i in range(n_features)) + ",label"
    rows = [",".join(str(i * j % 7) for j in range(n_features)) + f",{i % 2}" for i in range(20)]
    data.write_text("\n".join([header, *rows]) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: csv-check\n"
        f"data: {{source: {data}, label: label}}\n"
        f"model: {model}\n"
        f"train: {{epochs: 1, batch_size: 8, workers: 1}}\n"
    )
    return spec.name


def test_validate_of_a_csv_spec_imports_neither_torch_nor_ray(tmp_path):
    spec = csv_spec(tmp_path, 4, "{type: mlp, params: {hidden_sizes: [8]}}")

    done, modules = orch(tmp_path, "validate", spec)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{spec}: ok: csv-check: mlp on ")
    assert "pyarrow" in modules  # the data was opened and checked
    assert heavy_imports(modules) == []


def test_validate_says_a_cnn_cannot_take_the_data_without_torch(tmp_path):
    spec = csv_spec(tmp_path, 5, "{type: cnn, params: {channels: [4]}}")

    done, modules = orch(tmp_path, "validate", spec)

    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {spec}:3: model.params: 5 features are not a square image; set "
        "model.params.image_shape to [channels, height, width]"
    )
    assert heavy_imports(modules) == []


def test_schema_imports_neither_torch_nor_ray(tmp_path):
    done, modules = orch(tmp_path, "schema")

    assert done.returncode == 0, done.stderr
    assert '"title": "orch pipeline"' in done.stdout
    assert heavy_imports(modules) == []
