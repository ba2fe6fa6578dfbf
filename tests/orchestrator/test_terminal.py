"""What a terminal and a script see of `orch run`: with --json, stdout is one JSON document
whatever Ray prints; without --verbose, no line from Ray's, DeepSpeed's or MLflow's loggers
reaches the terminal: it goes to a log file under ORCH_HOME/logs, whose path a failure
prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Four single-worker trials at once (each trains in its own Tune actor) start more Python
# workers than Ray expects: the raylet warns at 4x its startup concurrency (1 here), not
# counting twice its I/O workers (0 here), and Ray prints that on the driver's stdout from a
# background thread, "(raylet) WARNING: N PYTHON worker processes ...".
STUDY = """\
name: iris-warns
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [16]}}
train: {epochs: 2, batch_size: 16, workers: 1, resources_per_worker: {CPU: 0.25}}
tune:
  metric: val_accuracy
  num_samples: 4
  max_concurrent_trials: 4
  search: {algorithm: random, seed: 0}
  early_stopping: {type: none}
  space:
    train.optimizer.lr: {loguniform: [0.001, 0.01]}
"""

# Lines of the libraries' own loggers and forwarders, as they print them.
LIBRARY_LINE = re.compile(
    r"^\(raylet\)|^\((pid|\w+) pid=|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING|ERROR)"
    r"|^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) |^\[\d{4}-\d\d-\d\d .*\] \[(INFO|WARNING)\]"
    r"|Creating initial MLflow database tables|Updating database tables"
    r"|Token authentication is enabled|worker processes have been started"
)


def orch(args, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env={**os.environ, "DS_ACCELERATOR": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.fresh_mlflow_store
def test_json_is_one_document_and_ray_chatter_goes_to_the_log(orch_home, tmp_path):
    spec = tmp_path / "study.yaml"
    spec.write_text(STUDY)
    extensions = tmp_path / "torch-extensions"  # an empty JIT cache, as on a fresh machine
    extensions.mkdir()
    done = orch(
        ["run", str(spec), "--json"],
        tmp_path,
        RAY_worker_maximum_startup_concurrency="1",
        RAY_max_io_workers="0",
        TORCH_EXTENSIONS_DIR=str(extensions),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the whole of stdout
    assert result["status"] == "succeeded" and len(result["study"]["trials"]) == 4
    assert not [line for line in done.stderr.splitlines() if LIBRARY_LINE.search(line)]
    (log,) = (orch_home / "logs").glob("run-*.log")
    text = log.read_text()
    assert "PYTHON worker processes have been started" in text  # Ray did warn: here
    assert "Creating initial MLflow database tables" in text
    # nothing compiled at run time: no DeepSpeed op was built into the empty cache
    assert sorted(p.name for p in extensions.rglob("*")) == []


@pytest.mark.fresh_mlflow_store  # MLflow creating the store is what its log holds
def test_a_failure_prints_where_the_full_log_is(orch_home, tmp_path):
    spec = tmp_path / "serve.yaml"
    spec.write_text(
        "name: nothing-registered\ndata: {source: sklearn://iris}\n"
        "model: {type: mlp}\nserve: {name: nothing}\n"
    )
    done = orch(["serve", str(spec)], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "nothing-registered" in lines[-1]
    (log,) = (orch_home / "logs").glob("serve-*.log")
    assert lines[-2] == f"full log: {log}" and log.read_text().strip()
    assert not [line for line in lines if LIBRARY_LINE.search(line)]
    assert "Traceback" not in done.stderr
