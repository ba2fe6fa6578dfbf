"""Shared pieces of the benchmarks: where results live, the machine, markdown helpers.

Nothing here imports torch, Ray or DeepSpeed, so listing and rendering benchmarks is cheap.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
COMMAND = "make bench"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PACKAGES = ("torch", "ray", "deepspeed")


# --------------------------------------------------------------------------- machine


def _cpuinfo_blocks() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        block = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            block[key.strip()] = value.strip()
        blocks.append(block)
    return blocks


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else round(int(quota) / int(period), 2)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> float:
    """1-minute load average; anything well above 0 means other work shares the CPUs."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, memory and library versions."""
    blocks = _cpuinfo_blocks()
    first = blocks[0] if blocks else {}
    physical = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    flags = set(first.get("flags", "").split())
    return {
        "cpu_model": first.get("model name", platform.processor() or "unknown"),
        "cpu_mhz": float(first["cpu MHz"]) if "cpu MHz" in first else None,
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(physical) or None,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cgroup_cpu_quota": _cgroup_cpu_quota(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "ram_gib": _mem_total_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
    }


def run_lines(results: dict, only_command: str, after_load: str) -> list[str]:
    """The Command, Machine and Run lines every section opens with; ``after_load`` ends the
    Run line (what the load average means for that section, or where its code was)."""
    alone = f" (this section alone: `{only_command}`)" if not results.get("quick") else ""
    return [
        f"- Command: `{results['command']}`{alone}",
        f"- Machine: {describe_machine(results['machine'])}",
        f"- Run: {results['started_at']}, {results['duration_s'] / 60:.1f} min; 1-min load "
        f"average {results['load_average_before']} before, {results['load_average_after']} "
        f"after{after_load}",
    ]


def describe_machine(machine: dict) -> str:
    """One markdown line naming the machine and the library versions."""
    cores = f"{machine.get('logical_cpus')} logical CPUs"
    if machine.get("physical_cores"):
        cores += f" ({machine['physical_cores']} physical cores)"
    if machine.get("cgroup_cpu_quota"):
        cores += f", cgroup quota {machine['cgroup_cpu_quota']} CPUs"
    mhz = f" @ {machine['cpu_mhz']:.0f} MHz" if machine.get("cpu_mhz") else ""
    flags = ", ".join(machine.get("cpu_flags") or []) or "none of " + "/".join(CPU_FLAGS)
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    return (
        f"{machine.get('cpu_model')}{mhz}, {cores}, {machine.get('ram_gib')} GiB RAM; "
        f"SIMD: {flags}; Python {machine.get('python')}, {versions}; {machine.get('os')}"
    )


# --------------------------------------------------------------------------- numbers


def steady_median(values: Sequence[float], warmup: int = 1) -> float | None:
    """Median after dropping ``warmup`` leading values (kept if nothing else is left)."""
    values = list(values)
    steady = values[warmup:] or values
    return statistics.median(steady) if steady else None


def spread(values: Sequence[float], warmup: int = 1) -> float | None:
    """(max - min) / median of the steady values: how noisy the measurement was."""
    steady = list(values)[warmup:] or list(values)
    if len(steady) < 2:
        return None
    return (max(steady) - min(steady)) / statistics.median(steady)


def median_ms(call, repeats: int) -> float:
    """Median wall time of ``call()`` in ms, after one untimed warm-up call."""
    import time

    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table; ``align`` holds one of l/r/c per column (default left)."""
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    align = align.ljust(len(headers), "l")
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join(marks[a] for a in align) + "|",
    ]
    for row in rows:
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so a failed run never leaves half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def result_header(name: str, quick: bool, command: str) -> dict:
    """The fields every benchmark's results start with: what ran, when, where, how loaded."""
    from datetime import datetime, timezone

    return {
        "benchmark": name,
        "quick": quick,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "load_average_before": load_average(),
    }
