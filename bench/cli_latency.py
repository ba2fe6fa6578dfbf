"""`orch validate` and `orch schema` at editor speed: wall time of the real CLI process.

Each command is run as a user (or an editor's save hook) runs it: ``.venv/bin/orch ...`` in
a fresh process, timed from start to exit, 5 times; the median is reported. One more run
under a wrapper lists the heavy libraries the command imported (torch and Ray must not be
among them for a file-backed spec). Nothing here starts Ray.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.common import REPO, describe_machine, fmt, md_table, result_header

TITLE = "CLI latency: `orch validate` and `orch schema`"
ORDER = 60
COMMAND = "make bench  (python -m bench --only cli_latency)"
GOAL_S = 1.5
RUNS = 5
HEAVY = ("torch", "ray", "deepspeed", "mlflow", "sklearn", "pyarrow")
# argv: <modules file> <orch arguments...>; writes the top-level modules imported, at exit.
WRAPPER = textwrap.dedent(
    """\
    import atexit, runpy, sys
    out = sys.argv[1]
    atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
    sys.argv = ["orchestrator", *sys.argv[2:]]
    runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
    """
)


def _log(message: str) -> None:
    print(f"[cli_latency] {message}", file=sys.stderr, flush=True)


def _csv_spec(work: Path) -> Path:
    """A 13-feature, 2,000-row CSV and a spec reading it (an MLP, as a user would start)."""
    data = work / "data.csv"
    header = ",".join(f"x{i}" for i in range(13)) + ",label"
    rows = [",".join(f"{(i * 7 + j * 13) % 101 / 10:.1f}" for j in range(13)) + f",{i % 3}"
            for i in range(2000)]  # fmt: skip
    data.write_text("\n".join([header, *rows]) + "\n")
    spec = work / "spec.yaml"
    spec.write_text(
        "name: csv-latency\n"
        f"data: {{source: {data}, label: label}}\n"
        "model: {type: mlp, params: {hidden_sizes: [64, 32]}}\n"
        "train: {epochs: 5, batch_size: 64, workers: 2, resources_per_worker: {CPU: 1}}\n"
    )
    return spec


def _cases(work: Path) -> list[tuple[str, list[str], str]]:
    """(label, orch arguments, what the data check opens)."""
    digits = str(REPO / "examples" / "digits.yaml")
    return [
        ("validate, CSV-backed spec", ["validate", str(_csv_spec(work))], "a CSV file"),
        ("validate examples/digits.yaml", ["validate", digits], "sklearn://digits"),
        ("validate --no-data examples/digits.yaml", ["validate", "--no-data", digits], "nothing"),
        ("schema", ["schema"], "nothing"),
    ]


def _imports(args: list[str], work: Path) -> list[str]:
    modules_file = work / "modules.txt"
    subprocess.run(
        [sys.executable, "-c", WRAPPER, str(modules_file), *args],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    top = {m.split(".")[0] for m in modules_file.read_text().split()}
    return [m for m in HEAVY if m in top]


def _time(orch: str, args: list[str], work: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([orch, *args], cwd=work, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def run(quick: bool = False) -> dict:
    results = result_header("cli_latency", quick, COMMAND)
    orch = str(Path(sys.executable).parent / "orch")
    runs = 2 if quick else RUNS
    cases = []
    with tempfile.TemporaryDirectory(prefix="orch-cli-bench-") as tmp:
        work = Path(tmp)
        for label, args, opens in _cases(work):
            times = _time(orch, args, work, runs)
            heavy = _imports(args, work)
            _log(f"{label}: median {statistics.median(times):.2f} s, imports {heavy or 'none'}")
            shown = " ".join(["orch", *args]).replace(tmp, "TMP").replace(f"{REPO}/", "")
            cases.append(
                {
                    "label": label,
                    "command": shown,
                    "opens": opens,
                    "times_s": times,
                    "median_s": statistics.median(times),
                    "heavy_imports": heavy,
                }
            )
    results["runs"] = runs
    results["cases"] = cases
    return results


def render(results: dict) -> str:
    cases = {c["label"]: c for c in results["cases"]}
    csv, schema = cases["validate, CSV-backed spec"], cases["schema"]
    no_heavy = all(not ({"torch", "ray"} & set(c["heavy_imports"])) for c in (csv, schema))
    goals = md_table(
        ["goal", "measured", ""],
        [
            [
                f"`orch validate` of a file-backed spec: median under {GOAL_S} s",
                f"{csv['median_s']:.2f} s (median of {results['runs']})",
                "met" if csv["median_s"] < GOAL_S else "**NOT met**",
            ],
            [
                "`orch validate` (file-backed) and `orch schema` import neither torch nor Ray",
                f"validate (CSV) imports {', '.join(csv['heavy_imports']) or 'none'}; "
                f"schema imports {', '.join(schema['heavy_imports']) or 'none'} (of "
                f"{', '.join(HEAVY)})",
                "met" if no_heavy else "**NOT met**",
            ],
        ],
    )
    table = md_table(
        ["command", "data check opens", "median s", "each run, s", "heavy libraries imported"],
        [
            [
                f"`{c['command']}`",
                c["opens"],
                fmt(c["median_s"], 2),
                ", ".join(fmt(t, 2) for t in c["times_s"]),
                ", ".join(c["heavy_imports"]) or "none",
            ]
            for c in results["cases"]
        ],
        align="llrll",
    )
    return (
        f"## {TITLE}\n\n"
        f"- Command: `{results['command']}`, started {results['started_at']}; load average "
        f"{results['load_average_before']} before.\n"
        f"- Machine: {describe_machine(results['machine'])}\n"
        f"- Each command runs as `.venv/bin/orch ...` in a fresh process, {results['runs']} "
        "times, timed from start to exit; one more run under a wrapper lists which of "
        f"{', '.join(HEAVY)} it imported.\n\n"
        f"### Goals\n\n{goals}\n\n### Details\n\n{table}\n\n"
        "Reading: a `sklearn://` source is checked by loading the scikit-learn set, so its "
        "`orch validate` imports scikit-learn (and SciPy) and takes longer than a file's; "
        "`--no-data` skips the data check. torch is imported only when a check builds the "
        "model: counting its layers for `pipeline_stages` > 1, or a zoo entry registered "
        "without a torch-free `check`.\n"
    )
