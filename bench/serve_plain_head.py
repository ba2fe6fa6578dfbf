"""Serving on a head the user started with a plain ``ray start`` (issue 29).

Such a head's processes would start Serve's Python proxy. orch now starts Serve there with
HAProxy anyway (Ray's public ``serve.start(controller_options=...)``), unless told
``ORCH_SERVE_INGRESS=proxy``. This measures both on the same kind of head, side by side:
the int8 MLP on breast_cancer served by our pipeline (batched, one replica of 1 CPU)
against bare FastAPI + ONNX Runtime serving the very file the replica downloads, in paired
rounds at c=32 (``serve_ingress``'s method: the machine drifts between minutes).

Each mode gets a fresh head (``ray start --head`` with the Python proxy's environment) in a
child process, so one's Serve cannot carry over to the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from bench.common import (
    COMMAND,
    fmt,
    load_average,
    md_table,
    read_json,
    result_header,
    run_lines,
    write_json,
)
from bench.serve_ingress import (
    BATCHED,
    PAIRED_ROUNDS,
    Case,
    _log,
    _paired,
    _register,
    _serve_case,
)

NAME = "serve_plain_head"
TITLE = "Serving on a plain `ray start` head: HAProxy without a restart (issue 29)"
ORDER = 46
QUICK_COMMAND = "python -m bench --quick --only serve_plain_head"
MODES = {"default": None, "proxy on request": "proxy"}


def _child_main(plan_path: str) -> None:
    """In the child (its environment the head's): the model served through orch's default
    path, or the proxy when asked, then the paired rounds against the bare server."""
    import ray
    from ray import serve

    from bench.serve_throughput import _free_port
    from serve.deploy import ingress_in_use

    plan = json.loads(Path(plan_path).read_text())
    ray.init(address=plan["gcs_address"], logging_level="WARNING", log_to_driver=False)
    out: dict = {}
    try:
        case = Case("haproxy", "mlp", BATCHED)
        started = time.perf_counter()
        url, variant = _serve_case(case, plan, _free_port())
        out["deploy_s"] = time.perf_counter() - started
        out["ingress"] = ingress_in_use()
        body = plan["models"]["mlp"]["body"].encode()
        out["paired"] = _paired(url, body, case, plan, variant)
    finally:
        serve.shutdown()
        ray.shutdown()
    write_json(Path(plan["out"]), out)


def _in_child(label: str, asked: str | None, plan: dict, home: Path) -> dict:
    """A fresh plain head for ``label``, and a child process (a driver on it) that serves
    and measures; the head is stopped after."""
    from cluster.local import start_head

    folder = home / label.replace(" ", "-")
    folder.mkdir()
    head = start_head(folder / "head", num_cpus=2, ingress="proxy")
    try:
        plan_path, out_path = folder / "plan.json", folder / "out.json"
        plan |= {"gcs_address": head.gcs_address, "out": str(out_path)}
        plan_path.write_text(json.dumps(plan))
        env = {k: v for k, v in head.env().items() if not k.startswith("ORCH_SERVE")}
        env["ORCH_HOME"] = str(folder / "orch")
        if asked:
            env["ORCH_SERVE_INGRESS"] = asked
        code = f"from bench.serve_plain_head import _child_main; _child_main({str(plan_path)!r})"
        proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=900)
    finally:
        head.stop()
    result = read_json(out_path)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"the {label} child failed (exit {proc.returncode}); see its stderr")
    return result


def run(quick: bool = False) -> dict:
    started = time.perf_counter()
    results = result_header(NAME, quick, QUICK_COMMAND if quick else COMMAND)
    home = Path(tempfile.mkdtemp(prefix="serve-plain-head-bench-"))
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["ORCH_HOME"] = str(home / "orch")
    seconds = 2.0 if quick else 5.0
    models = _register(["mlp"], tracking_uri)
    plan = {"quick": quick, "seconds": seconds, "tracking_uri": tracking_uri, "models": models}
    results.update(seconds_per_point=seconds, rounds=PAIRED_ROUNDS, modes={})
    for label, asked in MODES.items():
        child = _in_child(label, asked, plan, home)
        paired = child["paired"]
        ratios = [o / b for o, b in zip(paired["ours"], paired["bare"], strict=True)]
        results["modes"][label] = {**child, "ratio": median(ratios), "ratios": ratios}
        _log(f"{label}: {child['ingress']}, ours/bare {median(ratios):.2f}x")
    results["duration_s"] = time.perf_counter() - started
    results["load_average_after"] = load_average()
    return results


def render(results: dict) -> str:
    modes = results["modes"]
    default = modes["default"]
    goal = md_table(
        ["goal", "measured", ""],
        [
            [
                "int8 MLP on a plain `ray start` head, orch's default, >= 0.3x bare FastAPI "
                "+ ONNX Runtime at c=32 (paired rounds)",
                f"{default['ratio']:.2f}x through {default['ingress']} (rounds "
                f"{', '.join(fmt(r, 2) for r in default['ratios'])})",
                "met" if default["ratio"] >= 0.3 else "**NOT met**",
            ]
        ],
    )
    rows = [
        [
            label,
            m["ingress"],
            ", ".join(fmt(v) for v in m["paired"]["ours"]),
            ", ".join(fmt(v) for v in m["paired"]["bare"]),
            f"{m['ratio']:.2f}x",
            ", ".join(fmt(v, 1) for v in m["paired"]["ours_p99"]),
            f"{m['deploy_s']:.0f} s",
        ]
        for label, m in modes.items()
    ]
    details = md_table(
        ["orch serve", "ingress", "ours req/s", "bare req/s", "ours/bare", "ours p99 ms",
         "deploy"],
        rows,
    )  # fmt: skip
    lines = "\n".join(run_lines(results, "python -m bench --only serve_plain_head", ""))
    return (
        f"## {TITLE}\n\n{lines}\n"
        "- Each mode: a fresh `ray start --head` (2 CPUs, token auth, the Python proxy's "
        "environment), the breast_cancer int8 MLP served by `orch serve` (batched, one "
        f"replica of 1 CPU), {results['rounds']} paired rounds of "
        f"{results['seconds_per_point']:g} s at c=32 against bare FastAPI + ONNX Runtime "
        "serving the same file.\n\n"
        f"### Goal\n\n{goal}\n\n### Details\n\n{details}\n"
    )
