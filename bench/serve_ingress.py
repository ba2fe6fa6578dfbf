"""Serve's HTTP path: the default proxy against direct ingress, on a no-op app.

Why: the serving goal "Serve adds at most 3 ms p50 over bare uvicorn" is missed through
Serve's default proxy on 2 cores. Ray 2.60's ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` turns on
direct ingress: the ingress replica itself listens (first port 30000) while port 8000
still answers through the proxy. Each mode needs its own Ray (Serve reads the variable when
its processes start), so each runs in a child process; the client is the same closed loop
as ``serve_throughput``'s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from bench.common import describe_machine, md_table, result_header

TITLE = "Serve ingress: default proxy vs direct ingress (no-op app)"
ORDER = 35
COMMAND = "make bench  (python -m bench --only serve_ingress)"
CONCURRENCY = (1, 16)
DIRECT_PORT = 30000  # Ray's RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT default


def _log(message: str) -> None:
    print(f"[serve_ingress] {message}", file=sys.stderr, flush=True)


def _measure(mode: str, seconds: float) -> dict:
    """In the child: start Ray and a no-op Serve app in ``mode``, load each port it answers."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    from bench.serve_throughput import _closed_loop, _wait_http

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    api = FastAPI()

    @serve.deployment(max_ongoing_requests=64)
    @serve.ingress(api)
    class Noop:
        @api.post("/")
        def root(self) -> dict:
            return {"ok": True}

    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    ports = {"8000 (proxy)": 8000}
    if mode == "direct":
        ports[f"{DIRECT_PORT} (replica)"] = DIRECT_PORT
    out: dict = {}
    for label, port in ports.items():
        url = f"http://127.0.0.1:{port}/noop/"
        _wait_http(url)
        out[label] = {
            str(c): asyncio.run(_closed_loop(url, b"{}", c, seconds)) for c in CONCURRENCY
        }
    serve.shutdown()
    ray.shutdown()
    return out


def run(quick: bool = False) -> dict:
    results = result_header("serve_ingress", quick, COMMAND)
    seconds = 2.0 if quick else 8.0
    results["modes"] = {}
    for mode in ("proxy", "direct"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        if mode == "direct":
            env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        code = (
            "import json, sys; from bench.serve_ingress import _measure; "
            f"print('RESULT' + json.dumps(_measure({mode!r}, {seconds})))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            raise RuntimeError(f"{mode} mode failed:\n{proc.stderr[-3000:]}")
        results["modes"][mode] = json.loads(line[len("RESULT") :])
        _log(f"{mode}: {results['modes'][mode]}")
    return results


def render(results: dict) -> str:
    rows = []
    for mode, ports in results["modes"].items():
        for port, points in ports.items():
            for c, p in points.items():
                rows.append([mode, port, c, f"{p['rps']:,.0f}", f"{p['p50_ms']:.2f}",
                             f"{p['p99_ms']:.2f}", p["errors"]])  # fmt: skip
    table = md_table(["mode", "port", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"], rows)
    direct = results["modes"]["direct"]
    proxy_p50 = results["modes"]["proxy"]["8000 (proxy)"]["1"]["p50_ms"]
    replica_p50 = direct[f"{DIRECT_PORT} (replica)"]["1"]["p50_ms"]
    return f"""## {TITLE}

Command: `{results["command"]}`; one run, {results["started_at"]}; closed-loop aiohttp
clients on the same machine; a FastAPI no-op deployment, one replica.
{describe_machine(results["machine"])}

{table}

Reading: at c=1 the default proxy answers in {proxy_p50:.2f} ms p50; with direct ingress the
replica's own port answers in {replica_p50:.2f} ms ({proxy_p50 / replica_p50:.1f}x less), while
port 8000 still goes through the proxy. Pipelines are served through the default proxy all
the same: with direct ingress every ingress replica listens on a port of its own (30000,
30001, ...), so an autoscaled deployment, a traffic split between aliases and the `/v2`
router would no longer sit behind one address, and the mode has to be in the environment
of Serve's processes before Serve starts on the cluster. For a single-replica app with a
p50 budget under the proxy's cost, direct ingress is the way; it is not a spec option yet.
"""
