"""`ray job submit -- python -m orchestrator run ...` on a real `ray start --head` cluster
with Ray's token authentication on: unauthenticated calls are refused, ours get through."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def token_cluster():
    """A head node of our own (own ports, temp dir and token), stopped by its process group."""
    tmp = Path(tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp"))
    token = secrets.token_hex(16)
    (tmp / "token").write_text(token)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp / "token"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # as in an activated venv: the job's `python` is ours
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    gcs = free_port()
    low = random.randrange(20000, 29000, 100)
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--num-cpus",
        "2",
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--min-worker-port",
        str(low),
        "--max-worker-port",
        str(low + 99),
        "--temp-dir",
        str(tmp / "ray"),
        "--disable-usage-stats",
    ]
    head = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=open(tmp / "head.log", "w"),
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                req = urllib.request.Request(
                    f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
                )
                urllib.request.urlopen(req, timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline or head.poll() is not None:
                    raise RuntimeError((tmp / "head.log").read_text()[-3000:]) from None
                time.sleep(1)
        yield {
            "address": address,
            "gcs": f"127.0.0.1:{gcs}",
            "token": token,
            "env": env,
            "tmp": tmp,
        }
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


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


def test_job_submit_with_token_auth(token_cluster, tmp_path):
    address, env = token_cluster["address"], token_cluster["env"]

    # Token auth is on: the Jobs API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=5)
    assert refused.value.code in (401, 403)

    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC)
    home = tmp_path / "home"
    runtime_env = {
        "env_vars": {
            "ORCH_HOME": str(home),
            "DS_ACCELERATOR": "cpu",
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        }
    }
    proc = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "-m",
            "orchestrator",
            "run",
            str(spec),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"name"')]
    assert lines, proc.stdout[-3000:]
    result = json.loads(lines[-1])
    assert result["status"] == "succeeded"
    assert result["metrics"]["epoch"] == 3
    assert result["metrics"]["val_accuracy"] > 0.6
    run = mlflow.MlflowClient(result["tracking_uri"]).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["orch.ray_job_id"]  # the driver ran inside the submitted Ray job


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
