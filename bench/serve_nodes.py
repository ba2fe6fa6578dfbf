"""Serve across nodes: one HAProxy address in front, replicas on two nodes, a node lost.

Multi-level load balancing as orch sets it up: ``orch cluster up --nodes 2`` (a head and a
worker raylet on this machine, 1 CPU each, HAProxy on the head only), a pipeline served
with two replicas of 1 CPU (so one per node) through ``orch serve --address``, and a
closed-loop client on the one public address. HAProxy's own statistics (its stats port,
CSV) count the requests each replica answered. Then the worker node is SIGKILLed under
load: how long its replica keeps being sent requests, and how many requests fail over the
whole run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from bench.common import describe_machine, md_table, result_header

TITLE = "Serve across nodes: one address, replicas on two nodes, a node lost under load"
ORDER = 36
COMMAND = "make bench  (python -m bench --only serve_nodes)"
CONCURRENCY = 16
GOAL_STOP_S = 15.0
GOAL_FAILED = 0.01


def _log(message: str) -> None:
    print(f"[serve_nodes] {message}", file=sys.stderr, flush=True)


def _spec(tracking_uri: str) -> dict:
    return {
        "name": "nodes-serve-bench",
        "data": {"source": "sklearn://breast_cancer", "seed": 0},
        "model": {"type": "mlp", "params": {"hidden_sizes": [64, 32]}},
        "tracking": {"tracking_uri": tracking_uri},
        "register": {"model_name": "nodes-serve-bench"},
        "serve": {
            "name": "spread",
            "quantization": "dynamic-int8",
            "cpus_per_replica": 0.6,  # a node has 1 CPU: one replica per node, and the router
            "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        },
    }


def _stats(port: int) -> dict[str, dict]:
    """HAProxy's per-server rows of the app's backend: name -> {status, total requests}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats;csv", timeout=5) as reply:
        text = reply.read().decode()
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        row["svname"]: {"status": row["status"], "total": int(row["stot"] or 0)}
        for row in rows
        if row["svname"].startswith("SERVE_REPLICA") and "spread" in row["svname"]
    }  # fmt: skip


def _server_ports(state_dir: Path) -> dict[str, int]:
    """HAProxy server name -> the replica port it sends to (its config's `server` lines)."""
    ports = {}
    for config in state_dir.glob("*/haproxy.cfg"):
        for line in config.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "server" and ":" in words[2]:
                ports[words[1]] = int(words[2].rsplit(":", 1)[1])
    return ports


def _replica_ports_on(node_pid: int) -> set[int]:
    """Listening ports of the Serve replicas a node started: processes that descend from
    its ``ray start`` process (the node's raylet starts its workers)."""
    import psutil

    ports = set()
    for process in psutil.Process(node_pid).children(recursive=True):
        try:
            if "ServeReplica" not in " ".join(process.cmdline()):
                continue
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip == "127.0.0.1":
                    ports.add(conn.laddr.port)
        except psutil.Error:
            continue
    return ports


class Load:
    """Closed-loop clients on a thread; every answer (or failure) counted per second."""

    def __init__(self, url: str, body: bytes, concurrency: int):
        self.url, self.body, self.concurrency = url, body, concurrency
        self.per_second: dict[int, list[int]] = {}  # second -> [ok, failed]
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _count(self, ok: bool) -> None:
        bucket = self.per_second.setdefault(int(time.monotonic() - self.started), [0, 0])
        bucket[0 if ok else 1] += 1

    async def _run(self) -> None:
        import aiohttp

        headers = {"content-type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def client() -> None:
                while not self._stop.is_set():
                    try:
                        async with session.post(self.url, data=self.body, headers=headers) as r:
                            await r.read()
                            self._count(r.status == 200)
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        self._count(False)

            await asyncio.gather(*(client() for _ in range(self.concurrency)))

    def totals(self) -> tuple[int, int]:
        ok = sum(b[0] for b in self.per_second.values())
        return ok, sum(b[1] for b in self.per_second.values())


def _orch(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


class Served:
    """The app on the cluster: where to send requests, how to take it down."""

    def __init__(self, work: Path, head):
        from orchestrator.spec import PipelineSpec
        from tests.serve.conftest import register_quick_model

        spec = _spec(f"sqlite:///{work / 'mlflow.db'}")
        register_quick_model(PipelineSpec.model_validate(spec))
        self.path = work / "spread.yaml"
        self.path.write_text(yaml.safe_dump(spec))
        self.env = {**head.env(), "ORCH_HOME": str(work / "home")}
        self.work, self.address = work, ["--address", head.gcs_address]
        served = _orch(["serve", str(self.path), "--json", *self.address], self.env, work)
        if served.returncode != 0:
            raise RuntimeError(f"orch serve failed: {served.stderr[-2000:]}")
        self.url = json.loads(served.stdout)["endpoint"] + "/predict"
        self.body = json.dumps({"instances": [[0.0] * 30]}).encode()

    def down(self) -> int:
        args = ["serve", str(self.path), "--down", "--json", *self.address]
        return _orch(args, self.env, self.work).returncode


def _wait_up(stats_port: int, replicas: int, timeout_s: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        now = _stats(stats_port)
        if sum(s["status"] == "UP" for s in now.values()) >= replicas:
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"{replicas} replicas never came UP: {now}")
        time.sleep(0.5)


def _spread(served: Served, stats_port: int, node_of: dict, seconds: float) -> dict:
    before = _stats(stats_port)
    with Load(served.url, served.body, CONCURRENCY) as load:
        time.sleep(seconds)
    after = _stats(stats_port)
    ok, failed = load.totals()
    counts = {name: after[name]["total"] - before[name]["total"] for name in after}
    return {
        "seconds": seconds,
        "ok": ok,
        "failed": failed,
        "per_replica": {n: {"node": node_of[n], "requests": c} for n, c in counts.items()},
    }


def _node_loss(served: Served, stats_port: int, worker_pgid: int, lost: list[str], seconds: float):
    """SIGKILL the worker node's process group under load; follow HAProxy's counters."""
    timeline: list[tuple[float, dict]] = []
    with Load(served.url, served.body, CONCURRENCY) as load:
        time.sleep(3.0)
        killed_at = time.monotonic() - load.started
        os.killpg(worker_pgid, signal.SIGKILL)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            timeline.append((time.monotonic() - load.started, _stats(stats_port)))
            time.sleep(0.25)
    last_sent, down_at = killed_at, None
    for (_, earlier), (t, now) in zip(timeline, timeline[1:], strict=False):
        if any(now.get(n, {}).get("total", 0) > earlier.get(n, {}).get("total", 0) for n in lost):
            last_sent = t
        if down_at is None and all(now.get(n, {}).get("status") != "UP" for n in lost):
            down_at = t
    ok, failed = load.totals()
    return {
        "killed_at_s": killed_at,
        "last_request_to_lost_replica_s": last_sent - killed_at,
        "marked_down_after_s": None if down_at is None else down_at - killed_at,
        "ok": ok,
        "failed": failed,
        "failed_share": failed / max(1, ok + failed),
        "per_second": {str(k): v for k, v in sorted(load.per_second.items())},
    }


def run(quick: bool = False) -> dict:
    from cluster.local import cluster_down, cluster_up

    results = result_header("serve_nodes", quick, COMMAND)
    spread_s, after_kill_s = (4.0, 20.0) if quick else (10.0, 30.0)
    work = Path(tempfile.mkdtemp(prefix="orch-serve-nodes-"))
    state = work / "home" / "cluster"
    head, workers = cluster_up(state, 2, 1)
    try:
        stats_port = int(head.ingress_env["RAY_SERVE_HAPROXY_STATS_PORT"])
        served = Served(work, head)
        up = _wait_up(stats_port, 2)
        on_worker = _replica_ports_on(workers[0].pid)
        ports = _server_ports(Path(head.ingress_env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]))
        node_of = {name: "worker-1" if ports[name] in on_worker else "head" for name in up}
        if sorted(node_of.values()) != ["head", "worker-1"]:
            raise RuntimeError(f"the two replicas are not one per node: {node_of}, {ports}")
        results["spread"] = _spread(served, stats_port, node_of, spread_s)
        _log(f"spread: {results['spread']}")
        lost = [name for name, node in node_of.items() if node == "worker-1"]
        results["node_loss"] = _node_loss(served, stats_port, workers[0].pid, lost, after_kill_s)
        _log(f"node loss: {results['node_loss']}")
        results["serve_down_rc"] = served.down()
    finally:
        cluster_down(state)
    return results


def render(results: dict) -> str:
    spread, loss = results["spread"], results["node_loss"]
    rows = [[name, r["node"], f"{r['requests']:,}"] for name, r in spread["per_replica"].items()]
    stop = loss["last_request_to_lost_replica_s"]
    down = loss["marked_down_after_s"]
    goals = md_table(
        ["criterion", "goal", "measured", "met"],
        [
            ["requests reach replicas on both nodes", "both > 0",
             ", ".join(f"{r['node']} {r['requests']:,}" for r in spread["per_replica"].values()),
             "yes" if all(r["requests"] > 0 for r in spread["per_replica"].values()) else "**no**"],
            ["the lost node's replica stops receiving traffic", f"<= {GOAL_STOP_S:.0f} s",
             f"{stop:.1f} s after the kill (marked DOWN after "
             f"{'never' if down is None else f'{down:.1f} s'})",
             "yes" if stop <= GOAL_STOP_S else "**no**"],
            ["failed requests over the node-loss run", f"<= {GOAL_FAILED:.0%}",
             f"{loss['failed']:,} of {loss['ok'] + loss['failed']:,} ({loss['failed_share']:.2%})",
             "yes" if loss["failed_share"] <= GOAL_FAILED else "**no**"],
        ],
    )  # fmt: skip
    seconds = md_table(
        ["second", "ok", "failed"],
        [[s, f"{v[0]:,}", v[1]] for s, v in loss["per_second"].items()],
    )
    return f"""## {TITLE}

- Command: `{results["command"]}`, started {results["started_at"]}.
- Machine: {describe_machine(results["machine"])}
- Set-up: `orch cluster up --nodes 2 --cpus-per-node 1` (HAProxy on the head), the int8
  breast_cancer MLP served with `orch serve --address` as 2 replicas of 0.6 CPU (one per
  node), {CONCURRENCY} closed-loop clients on the one address; per-replica counts from
  HAProxy's own statistics (`/stats;csv` on its loopback stats port). Then the worker node's
  process group is SIGKILLed {loss["killed_at_s"]:.0f} s into a run under the same load.

{goals}

Requests per replica over {spread["seconds"]:.0f} s ({spread["ok"]:,} answered,
{spread["failed"]} failed):

{md_table(["replica (HAProxy server)", "node", "requests"], rows)}

The node-loss run, second by second (the kill at {loss["killed_at_s"]:.1f} s):

{seconds}

On paper, a real cluster: the same layout scales out by running HAProxy on every node
(Serve's default `EveryNode` proxy location) behind the cloud's load balancer, with
`serve.host: 0.0.0.0` so each HAProxy reaches the replicas of the other nodes. What bounds
it is measured above on 2 shared cores: one HAProxy thread carried about 1,400 no-op
requests/s ("Serve ingress"); each node's HAProxy balances least-connections over every
replica of the app, so added nodes add both ingress and replicas.
"""
