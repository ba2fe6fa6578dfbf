"""`orch run --address` from outside a real `ray start --head` cluster with Ray's token
authentication on: with the token the pipeline trains, registers and serves there; with a
wrong one it is refused with one line. (Pipelines submitted as Ray Jobs onto a token
cluster are tested through the queue: tests/orchestrator/test_queue.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A head node of our own (own ports, temp dir and token), stopped by its process group."""
    from cluster.local import start_head

    head = start_head(tmp_path_factory.mktemp("token-head"), num_cpus=2)
    yield {
        "address": head.dashboard_url,
        "gcs": head.gcs_address,
        "token": head.token,
        "env": head.env(),
    }
    head.stop()


SPEC = """\
name: submitted
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [16]}}
train:
  epochs: 3
  batch_size: 16
  optimizer: {lr: 0.01}
  workers: 2
  resources_per_worker: {CPU: 0.5}
"""


def test_orch_run_address_joins_token_cluster(token_cluster, tmp_path):
    """`orch run --address host:port` from outside: the driver joins with the token, trains,
    registers, deploys the serve section onto the cluster and returns with the endpoint."""
    spec = tmp_path / "p.yaml"
    port = free_port()
    spec.write_text(
        SPEC.replace("name: submitted", "name: joined")
        + f"serve: {{name: joined, port: {port}, cpus_per_replica: 0.5, max_accuracy_drop: 0.2,"
        " quantization: dynamic-int8}\n"
    )
    home = tmp_path / "home"
    env = {**token_cluster["env"], "ORCH_HOME": str(home), "DS_ACCELERATOR": "cpu"}
    env.pop("MLFLOW_TRACKING_URI", None)
    orch = str(Path(sys.executable).with_name("orch"))
    proc = subprocess.run(
        [orch, "run", str(spec), "--address", token_cluster["gcs"], "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["name"] == "joined"
    assert result["metrics"]["epoch"] == 3
    assert result["tracking_uri"] == f"sqlite:///{home / 'mlflow.db'}"  # the embedded store
    # orch has returned; the model keeps serving on the cluster
    assert result["endpoint"] == f"http://127.0.0.1:{port}/joined"
    assert result["served"]["versions"] == {"model": "1"}
    request = urllib.request.Request(
        f"{result['endpoint']}/predict",
        data=json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
        headers={"content-type": "application/json"},
    )
    reply = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert reply["model"]["name"] == "joined" and len(reply["predictions"][0]["probabilities"]) == 3

    # Without the token the same call is refused with one clear line, no traceback.
    bad = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "wrong-token")}
    (tmp_path / "wrong-token").write_text("0" * 32)
    refused = subprocess.run(
        [orch, "run", str(spec), "--address", token_cluster["gcs"]],
        env=bad,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
