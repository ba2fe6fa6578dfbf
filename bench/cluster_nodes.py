"""Ray's cross-node overhead on one machine: the same training on 1, 2 and 3 local nodes.

Every configuration offers the same 6 logical CPUs in all (1 node x 6, 2 x 3, 3 x 2; `ray
start` takes whole CPUs, and the 2 cores are shared alike) and trains the same pipeline
with 2 DeepSpeed workers of 1 CPU. A custom resource
``slot`` (one per node when there are several) puts at most one worker on a node, so with
2 or 3 nodes the two workers always sit on different Ray nodes: their gradients and data
shards cross between raylets. Nodes are real ``ray start`` processes (``orch cluster up``'s
code); the pipeline runs through ``orch run --address auto`` as a user would.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import describe_machine, md_table, result_header

TITLE = "Cluster: training across 1, 2 and 3 local Ray nodes"
ORDER = 50
COMMAND = "make bench  (python -m bench --only cluster_nodes)"
TOTAL_CPUS = 6


def _log(message: str) -> None:
    print(f"[cluster_nodes] {message}", file=sys.stderr, flush=True)


def _spec(epochs: int) -> dict:
    return {
        "name": "nodes-bench",
        "data": {"source": "sklearn://digits", "seed": 0},
        "model": {"type": "mlp", "params": {"hidden_sizes": [256, 256]}},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "workers": 2,
            "resources_per_worker": {"CPU": 1, "slot": 1},
            "deepspeed": {"zero_stage": 2, "precision": "fp32"},
        },
    }


def _one(nodes: int, epochs: int) -> dict:
    import mlflow

    from cluster.local import cluster_down, cluster_up

    work = Path(tempfile.mkdtemp(prefix=f"orch-nodes-{nodes}-"))
    state = work / "home" / "cluster"
    slots = 2.0 if nodes == 1 else 1.0
    start = time.perf_counter()
    cluster_up(state, nodes, TOTAL_CPUS // nodes, resources={"slot": slots})
    up_s = time.perf_counter() - start
    spec = work / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(epochs)))
    uri = f"sqlite:///{work / 'home' / 'mlflow.db'}"
    env = {**os.environ, "ORCH_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": uri}
    try:
        time.sleep(3)  # let the worker raylets register
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", str(spec), "--address", "auto", "--json"],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        wall_s = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        result = json.loads(proc.stdout)
    finally:
        cluster_down(state)
    history = mlflow.MlflowClient(uri).get_metric_history(result["mlflow_run_id"], "samples_per_s")
    per_epoch = [m.value for m in sorted(history, key=lambda m: m.step)][1:]  # skip warm-up
    return {
        "nodes": nodes,
        "cpus_per_node": TOTAL_CPUS // nodes,
        "worker_nodes": len(set(result["worker_nodes"].values())),
        "samples_per_s": statistics.median(per_epoch),
        "epochs": epochs,
        "val_accuracy": result["metrics"]["val_accuracy"],
        "cluster_up_s": up_s,
        "run_wall_s": wall_s,
    }


def run(quick: bool = False) -> dict:
    results = result_header("cluster_nodes", quick, COMMAND)
    epochs = 3 if quick else 12
    results["configs"] = []
    for nodes in (1, 2, 3):
        _log(f"{nodes} node(s)")
        point = _one(nodes, epochs)
        _log(f"{nodes} node(s): {point['samples_per_s']:.0f} samples/s")
        results["configs"].append(point)
    return results


def render(results: dict) -> str:
    base = results["configs"][0]["samples_per_s"]
    rows = [
        [
            c["nodes"],
            f"{c['cpus_per_node']:g}",
            c["worker_nodes"],
            f"{c['samples_per_s']:,.0f}",
            f"{c['samples_per_s'] / base:.2f}x",
            f"{c['val_accuracy']:.4f}",
            f"{c['run_wall_s']:.0f} s",
            f"{c['cluster_up_s']:.0f} s",
        ]
        for c in results["configs"]
    ]
    table = md_table(
        [
            "nodes",
            "CPUs per node",
            "nodes holding workers",
            "samples/s (median epoch)",
            "vs 1 node",
            "val_accuracy",
            "orch run wall",
            "cluster up",
        ],
        rows,
    )
    return (
        f"## {TITLE}\n\n"
        f"- Command: `{results['command']}`, started {results['started_at']}.\n"
        f"- Machine: {describe_machine(results['machine'])}\n"
        f"- Same {TOTAL_CPUS:g} logical CPUs in every configuration; digits MLP [256, 256], "
        "2 DeepSpeed workers (ZeRO-2, fp32) of 1 CPU, one per node when there are several "
        f"(custom resource `slot`); {results['configs'][0]['epochs']} epochs, the first left "
        "out of the median.\n\n"
        f"{table}\n"
    )
