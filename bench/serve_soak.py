"""Load held: a 10-minute soak of a served model at c=32 through the one public address.

The int8 breast_cancer MLP served by the pipeline on the embedded Ray (HAProxy ingress,
one replica of 1 CPU), closed-loop aiohttp clients for 10 minutes. Per minute: answered and
failed requests, p50 and p99, and the resident memory of the replica and of HAProxy, so a
leak or a slow drift shows as a trend, not as one number.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import describe_machine, md_table, result_header

TITLE = "Serve soak: 10 minutes at c=32 through the public address"
ORDER = 37
COMMAND = "make bench  (python -m bench --only serve_soak)"
CONCURRENCY = 32


def _log(message: str) -> None:
    print(f"[serve_soak] {message}", file=sys.stderr, flush=True)


def _rss_mb(match: str) -> float:
    """Resident memory (MB) of this process tree's processes whose command line has ``match``."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if match in " ".join(child.cmdline()):
                total += child.memory_info().rss / 1e6
        except psutil.Error:
            continue
    return total


class Windows:
    """Closed-loop clients; latencies and failures kept per window of ``window_s``."""

    def __init__(self, url: str, body: bytes, window_s: float, windows: int):
        self.url, self.body, self.window_s, self.windows = url, body, window_s, windows
        self.latencies: list[list[float]] = [[] for _ in range(windows)]
        self.failed = [0] * windows

    def _window(self, began: float) -> int | None:
        i = int((time.perf_counter() - began) / self.window_s)
        return i if i < self.windows else None

    async def run(self) -> None:
        import aiohttp

        headers = {"content-type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        began = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def client() -> None:
                while (i := self._window(began)) is not None:
                    start = time.perf_counter()
                    try:
                        async with session.post(self.url, data=self.body, headers=headers) as r:
                            await r.read()
                            ok = r.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        ok = False
                    if ok:
                        self.latencies[i].append(time.perf_counter() - start)
                    else:
                        self.failed[i] += 1

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


def _serve(work: Path) -> tuple[str, bytes]:
    from orchestrator import Client
    from orchestrator.spec import PipelineSpec
    from tests.serve.conftest import register_quick_model

    spec = PipelineSpec.model_validate({
        "name": "soak-bench",
        "data": {"source": "sklearn://breast_cancer", "seed": 0},
        "model": {"type": "mlp", "params": {"hidden_sizes": [64, 32]}},
        "tracking": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        "register": {"model_name": "soak-bench"},
        "serve": {"name": "soak", "quantization": "dynamic-int8", "cpus_per_replica": 1,
                  "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    })  # fmt: skip
    register_quick_model(spec)
    served = Client().serve(spec)
    return f"{served.endpoint}/predict", json.dumps({"instances": [[0.0] * 30]}).encode()


def run(quick: bool = False) -> dict:
    from ray import serve

    from orchestrator.runtime import init_local_ray

    results = result_header("serve_soak", quick, COMMAND)
    window_s, windows = (20.0, 3) if quick else (60.0, 10)
    os.environ.setdefault("ORCH_SERVE_INGRESS", "haproxy")
    init_local_ray(num_cpus=2, log_to_driver=False)
    try:
        url, body = _serve(Path(tempfile.mkdtemp(prefix="orch-soak-")))
        asyncio.run(Windows(url, body, 2.0, 1).run())  # warm-up
        soak = Windows(url, body, window_s, windows)
        memory: list[dict] = []
        thread = threading.Thread(target=lambda: asyncio.run(soak.run()), daemon=True)
        thread.start()
        for i in range(windows):
            time.sleep(window_s)
            memory.append(
                {"replica_mb": _rss_mb("ServeReplica:soak"), "haproxy_mb": _rss_mb("haproxy.cfg")}
            )
            _log(
                f"window {i + 1}/{windows}: {len(soak.latencies[i])} ok, "
                f"{soak.failed[i]} failed, {memory[-1]}"
            )
        thread.join()
        results["window_s"] = window_s
        results["windows"] = [
            {
                "ok": len(lat),
                "failed": failed,
                "rps": len(lat) / window_s,
                "p50_ms": 1000 * statistics.median(lat) if lat else None,
                "p99_ms": 1000 * sorted(lat)[int(0.99 * (len(lat) - 1))] if lat else None,
                **mem,
            }
            for lat, failed, mem in zip(soak.latencies, soak.failed, memory, strict=True)
        ]
    finally:
        serve.shutdown()
    return results


def render(results: dict) -> str:
    w = results["windows"]
    first, last = w[0], w[-1]
    failed = sum(x["failed"] for x in w)
    p99_ratio = last["p99_ms"] / first["p99_ms"]
    grow = {k: (last[k] - first[k]) / first[k] for k in ("replica_mb", "haproxy_mb")}
    goals = md_table(
        ["criterion", "must", "measured", "met"],
        [
            ["failed requests", "0", f"{failed:,} of {sum(x['ok'] for x in w) + failed:,}",
             "yes" if failed == 0 else "**no**"],
            ["p99, last window / first", "<= 1.5x",
             f"{last['p99_ms']:.1f} / {first['p99_ms']:.1f} ms = {p99_ratio:.2f}x",
             "yes" if p99_ratio <= 1.5 else "**no**"],
            *[[f"{k.split('_')[0]} resident memory, growth after the first window", "< 10 %",
               f"{first[k]:.0f} -> {last[k]:.0f} MB ({grow[k]:+.1%})",
               "yes" if grow[k] < 0.10 else "**no**"] for k in grow],
        ],
    )  # fmt: skip
    rows = [
        [i + 1, f"{x['ok']:,}", x["failed"], f"{x['rps']:,.0f}", f"{x['p50_ms']:.1f}",
         f"{x['p99_ms']:.1f}", f"{x['replica_mb']:.0f}", f"{x['haproxy_mb']:.0f}"]
        for i, x in enumerate(w)
    ]  # fmt: skip
    table = md_table(
        ["window", "ok", "failed", "req/s", "p50 ms", "p99 ms", "replica MB", "HAProxy MB"], rows
    )
    return f"""## {TITLE}

- Command: `{results["command"]}`, started {results["started_at"]}.
- Machine: {describe_machine(results["machine"])}
- Set-up: the int8 breast_cancer MLP served by the pipeline on the embedded Ray (HAProxy
  ingress, one replica of 1 CPU), {CONCURRENCY} closed-loop aiohttp clients on the same 2
  cores, {len(w)} windows of {results["window_s"]:.0f} s; memory is sampled at the end of
  each window (resident set of the replica process and of HAProxy).

{goals}

{table}
"""
