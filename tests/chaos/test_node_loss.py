"""A real 3-node Ray on this machine (`orch cluster up`): training spreads its workers over
nodes, a worker node killed mid-run costs the run only the epochs since its last
checkpoint (Ray Train restarts the worker group on the nodes that remain), and the model is
then served on that cluster. One run tells all of it: each run costs a minute here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import mlflow
import pytest

from cluster.local import load_workers
from tests.conftest import free_port
from tests.helpers import alive, wait_for, write

pytestmark = pytest.mark.slow

EPOCHS = 20
SPEC = f"""\
name: spread
data: {{source: sklearn://digits}}
model: {{type: mlp, params: {{hidden_sizes: [128, 128]}}}}
train:
  epochs: {EPOCHS}
  batch_size: 64
  workers: 2
  resources_per_worker: {{CPU: 1}}
  max_failures: 3
"""


def orch(home, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI with ORCH_HOME=home (where the cluster is recorded)."""
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "ORCH_HOME": str(home)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`orch cluster up --nodes 3 --cpus-per-node 1` under a module-wide ORCH_HOME."""
    home = tmp_path_factory.mktemp("three-nodes")
    try:
        up = orch(home, "cluster", "up", "--nodes", "3", "--cpus-per-node", "1", timeout=300)
        assert "3 nodes up" in up.stdout
        status = json.loads(orch(home, "cluster", "status", "--json").stdout)
        yield home, status
    finally:
        workers = load_workers(home / "cluster")
        down = orch(home, "cluster", "down").stdout
    assert "stopped worker-1" in down and "stopped the head" in down
    assert not any(alive(w.pid) and w.alive() for w in workers)


def test_cluster_status_shows_three_real_nodes(cluster):
    _, status = cluster
    nodes = [n for n in status["ray_nodes"] if n["state"] == "ALIVE"]
    assert len({n["node_id"] for n in nodes}) == 3
    assert sorted(n["labels"]["orch.node"] for n in nodes) == ["head", "worker-1", "worker-2"]
    assert all(n["cpus"] == 1.0 for n in nodes)
    assert status["head"]["alive"] and all(w["alive"] for w in status["workers"])


def test_a_run_spreads_over_nodes_survives_losing_one_and_serves_there(cluster, tmp_path):
    """`orch run --address auto` joins the token-auth cluster from outside and trains with
    its workers on two nodes; a worker node killed mid-run costs only the epochs since the
    last checkpoint (Ray Train restarts the group on the nodes that remain); the run then
    registers, deploys its serve section on the cluster and returns."""
    home, status = cluster
    label_of = {n["node_id"]: n["labels"]["orch.node"] for n in status["ray_nodes"]}
    port = free_port()
    serve = (
        f"serve: {{name: spread, port: {port}, cpus_per_replica: 0.5, max_accuracy_drop: 0.2,"
        " quantization: dynamic-int8}\n"
    )
    spec = write(tmp_path, "spread", SPEC + serve)
    out_path, err_path = tmp_path / "run.out", tmp_path / "run.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:  # files: a pipe would fill up
        run = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(spec), "--address", "auto", "--json"],
            stdout=out, stderr=err, env={**os.environ, "ORCH_HOME": str(home)},
        )  # fmt: skip
    client = mlflow.MlflowClient()

    def running_run():
        assert run.poll() is None, err_path.read_text()[-3000:]
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string="attributes.status = 'RUNNING'",
        )
        ready = [r for r in runs if r.data.metrics.get("epoch", 0) >= 5]
        return ready[0] if ready else None

    found = wait_for(running_run, 300, "5 epochs of the run", poll_s=0.2)
    nodes = {found.data.tags[f"orch.worker_node.{rank}"] for rank in (0, 1)}
    assert len(nodes) == 2 and nodes <= set(label_of)  # one CPU per node: two nodes
    victim_name = next(label_of[n] for n in sorted(nodes) if label_of[n] != "head")
    (victim,) = [w for w in load_workers(home / "cluster") if w.name == victim_name]
    victim.stop(signal.SIGKILL)  # the node dies: its raylet and every worker on it

    assert run.wait(timeout=600) == 0, err_path.read_text()[-3000:]
    result = json.loads(out_path.read_text())
    assert result["metrics"]["epoch"] == EPOCHS and result["metrics"]["val_accuracy"] > 0.9
    assert result["resumed_from_epochs"] and min(result["resumed_from_epochs"]) >= 2
    placed = {label_of.get(n) for n in result["worker_nodes"].values()}
    assert len(placed) == 2 and victim_name not in placed  # the two nodes that remain

    # orch has returned; the model keeps serving on the cluster
    assert result["endpoint"] == f"http://127.0.0.1:{port}/spread"
    reply = httpx.post(
        f"{result['endpoint']}/predict", json={"instances": [[0.0] * 64]}, timeout=30
    )
    assert reply.status_code == 200 and len(reply.json()["predictions"][0]["probabilities"]) == 10
    down = orch(home, "serve", str(spec), "--down", "--address", "auto")
    assert down.stdout.strip() == "Stopped serving spread."
    gone = httpx.post(f"{result['endpoint']}/predict", json={"instances": [[0.0] * 64]})
    assert gone.status_code == 404
    again = orch(home, "serve", str(spec), "--down", "--address", "auto", "--json")
    assert json.loads(again.stdout) == {"app": "spread", "stopped": False}


def test_a_streamed_run_on_the_cluster_gives_each_rank_its_shard(cluster, tmp_path):
    """A Parquet folder streamed to 2 data-parallel workers on the multi-node cluster (the
    statistics pass in Ray Data's tasks, then each rank reads its own rows on its own
    node): each rank trains on about half of the training rows per epoch, so no rank
    reads the whole source. Holds on 3 nodes or on the 2 that the node-loss test leaves."""
    from tests.jobs.test_streaming import write_parts

    home, _ = cluster
    parts = write_parts(tmp_path / "parts", files=4, rows=1000)
    spec = write(
        tmp_path,
        "sharded",
        f"name: sharded\ndata: {{source: '{parts}', label: label, streaming: true}}\n"
        "model: {type: mlp, params: {hidden_sizes: [32]}}\n"
        "train: {epochs: 2, batch_size: 128, workers: 2, resources_per_worker: {CPU: 1},"
        " optimizer: {lr: 0.01}}\n",
    )
    result = json.loads(orch(home, "run", str(spec), "--address", "auto", "--json").stdout)
    assert result["data"]["reading"] == "streamed" and len(result["worker_nodes"]) == 2
    half = result["data"]["n_train"] / 2
    client = mlflow.MlflowClient(result["tracking_uri"])
    rows = [m.value for m in client.get_metric_history(result["mlflow_run_id"], "rank_rows")]
    assert len(rows) == 2 and all(abs(r - half) <= 0.1 * half for r in rows), (rows, half)
    assert result["metrics"]["val_accuracy"] > 0.9
