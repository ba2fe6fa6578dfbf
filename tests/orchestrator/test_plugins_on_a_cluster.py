"""A model of the user's own on a running cluster (the shared `ray start` head): an installed
plugin's name through `orch submit` and the queue server, and an import path shipped with
`ray job submit --working-dir` (Ray puts the working directory on the path of the job's
driver and workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_head_left_idle
from tests.helpers import write

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
data: {{source: sklearn://breast_cancer, seed: 0}}
model: {model}
train: {{epochs: 6, batch_size: 32, workers: 1, resources_per_worker: {{CPU: 1}}}}
"""


def test_orch_submit_runs_an_installed_plugins_model(queue_client, orch_home):
    spec = SPEC.format(name="queued-plugin", model="{type: residual-mlp, params: {width: 16}}")
    job = queue_client.submit(write(orch_home, "queued-plugin", spec))
    info = job.wait(timeout=600)
    assert info.state == "succeeded", (info.reason, "".join(job.logs())[-3000:])
    assert info.result["metrics"]["val_accuracy"] >= 0.9, info.result


@pytest.mark.parametrize(
    "model",
    ["{type: 'my_models:build', params: {width: 12}}", "{type: residual-mlp, params: {width: 16}}"],
    ids=["import-path", "installed-plugin"],
)
def test_ray_job_submit_runs_an_import_path_or_an_installed_plugin(queue_head, tmp_path, model):
    """The import path's module travels with --working-dir; the plugin is in the venv."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_models.py").write_text(
        "from torch import nn\n\n"
        "def build(params, shape):\n"
        "    return nn.Sequential(nn.Linear(shape.n_features, params.width), nn.Tanh(),\n"
        "                         nn.Linear(params.width, shape.n_outputs))\n"
    )
    spec = SPEC.format(name="shipped", model=model)
    write(folder, "shipped", spec)
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "job", "submit", "--address", queue_head.dashboard_url,
               "--working-dir", str(folder), "--",
               "python", "-m", "orchestrator", "run", "shipped.yaml", "--json"]  # fmt: skip
    try:
        done = subprocess.run(
            command, env=queue_head.env(), cwd=tmp_path, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # the job's log holds orch's one --json document (one line), between Ray's own lines
        (line,) = [x for x in done.stdout.splitlines() if x.startswith('{"name":"shipped"')]
        result = json.loads(line)
        assert result["status"] == "succeeded"
        assert result["metrics"]["val_accuracy"] >= 0.9, result["metrics"]
    finally:
        assert_head_left_idle(queue_head)
