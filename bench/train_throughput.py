"""Training throughput: ``jobs.trainer.fit`` (DeepSpeed on Ray Train) against plain torch.

One run measures, on the same generated data, model, global batch and per-rank slicing:

* before: the trainer as DeepSpeed and torch come (``ORCH_STOCK_DEEPSPEED=1``: no step
  tuning, ``jobs.stock``) at ZeRO 0/2/3 fp32 and ZeRO-0 bf16, against a DDP run with the
  same stock optimizer; Ray is then restarted without the variable;
* a single-process torch loop (1 process, 2 torch threads);
* torch DDP under ``torchrun --nproc_per_node 2`` (gloo, 1 thread per process), run before
  and after the trainer variants; the faster of the two is the reference;
* our trainer with 2 workers x 1 CPU at ZeRO 0/2/3 in fp32 and bf16, and a hybrid layout
  (4 workers x 0.5 CPU: 2 pipeline stages x 2-way data parallel, ZeRO 1, fp32).

Throughput is the median of per-epoch samples/s after a warm-up epoch. Rank 0 of every
after-run and of the DDP runs is profiled (``train.profile``, ``jobs.profiling``) on steps
11-20, inside the warm-up epoch: the breakdown says where each step goes. Achieved FLOP/s
count 6 x (weight-matrix parameters) per training sample and are compared with a 2048^3
matmul on 2 threads measured in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import (
    COMMAND,
    REPO,
    fmt,
    load_average,
    md_table,
    result_header,
    run_lines,
    spread,
    steady_median,
)

TITLE = "Training throughput"
ORDER = 10

FEATURES = 256
CLASSES = 10
HIDDEN = [1024, 1024, 1024]
BATCH = 256
WORKERS = 2
LR = 1e-3
SEED = 0
MATMUL_N = 2048
# issue 32: vs the faster torchrun DDP run (must, goal)
GOALS = {"zero0-fp32": (0.85, 0.95), "zero2-fp32": (0.75, None), "zero3-fp32": (0.65, None)}
BF16_GOAL = (1.6, 2.0)  # ZeRO-0 bf16 / ZeRO-0 fp32, on a CPU with avx512_bf16 or AMX
STOCK_VARIANTS = ("zero0-fp32", "zero2-fp32", "zero3-fp32", "zero0-bf16")
ONLY_COMMAND = ".venv/bin/python -m bench --only train_throughput"
QUICK_COMMAND = ONLY_COMMAND + " --quick"
DDP_SCRIPT = Path(__file__).resolve().parent / "_ddp_baseline.py"
BASELINE_TIMEOUT_S = 900


@dataclass(frozen=True)
class Sizes:
    """Rows and epochs; bf16 gets fewer rows on CPUs without bf16 units (they crawl at it)."""

    rows: int
    epochs: int
    bf16_rows: int
    bf16_epochs: int
    val_rows: int
    bf16_matmul_n: int
    profile_skip: int  # train.profile's steps: inside the warm-up epoch, which is not counted
    profile_steps: int


FULL = Sizes(16384, 5, 1024, 4, 512, 2048, profile_skip=10, profile_steps=10)  # 64 steps/epoch
QUICK = Sizes(2048, 3, 512, 2, 256, 1024, profile_skip=2, profile_steps=4)  # 8 steps an epoch


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    zero_stage: int
    precision: str = "fp32"
    workers: int = WORKERS
    cpu_per_worker: float = 1.0
    pipeline_stages: int = 1


VARIANTS = [
    Variant("zero0-fp32", "ZeRO-0 fp32", 0),
    Variant("zero2-fp32", "ZeRO-2 fp32", 2),
    Variant("zero3-fp32", "ZeRO-3 fp32", 3),
    Variant("hybrid-pp2-dp2", "pipeline 2 x DP 2, ZeRO-1 fp32 (4 x 0.5 CPU)", 1, "fp32", 4, 0.5, 2),
    Variant("zero0-bf16", "ZeRO-0 bf16", 0, "bf16"),
    Variant("zero2-bf16", "ZeRO-2 bf16", 2, "bf16"),
    Variant("zero3-bf16", "ZeRO-3 bf16", 3, "bf16"),
]
GOAL_VARIANT = "zero0-fp32"


def _log(message: str) -> None:
    print(f"[train_throughput {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data & model


def make_data(rows: int, val_rows: int, seed: int = SEED):
    """Standard-normal features; labels from a fixed random linear teacher (learnable)."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)

    def split(n: int):
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        y = np.argmax(x @ teacher + 0.5 * rng.standard_normal((n, CLASSES)), axis=1)
        return x, y.astype(np.int64)

    x_train, y_train = split(rows)
    x_val, y_val = split(val_rows)
    return x_train, y_train, x_val, y_val


def prepared(x_train, y_train, x_val, y_val):
    """A PreparedData as ``jobs.data.prepare`` would return it (features already standard)."""
    from jobs.data import DataInfo, PreparedData

    info = DataInfo(
        task="classification",
        feature_names=[f"f{i}" for i in range(FEATURES)],
        label="target",
        classes=list(range(CLASSES)),
        feature_mean=[0.0] * FEATURES,
        feature_std=[1.0] * FEATURES,
        n_train=len(x_train),
        n_val=len(x_val),
        fingerprint=f"bench-synthetic-{len(x_train)}x{FEATURES}-seed{SEED}",
    )
    return PreparedData(x_train, y_train, x_val, y_val, info)


def flops_per_sample() -> int:
    """Training FLOPs per sample: 6 x weight-matrix parameters (forward 2, backward 4)."""
    from jobs.models import DataShape, build_layers

    layers = build_layers("mlp", {"hidden_sizes": HIDDEN}, DataShape(FEATURES, CLASSES))
    weights = sum(p.numel() for layer in layers for p in layer.parameters() if p.dim() >= 2)
    return 6 * weights


# --------------------------------------------------------------------------- measurements


def matmul_peak(dtype_name: str, n: int, repeats: int, budget_s: float) -> dict:
    """Best GFLOP/s of an n^3 matmul on 2 threads (up to ``repeats`` tries within budget)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(SEED)
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        a[:256, :256] @ b[:256, :256]  # warm the kernel without paying for a full product
        times: list[float] = []
        while len(times) < repeats and sum(times) < budget_s:
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    best = min(times)
    return {
        "n": n,
        "threads": 2,
        "tries": len(times),
        "best_s": best,
        "gflops": 2 * n**3 / best / 1e9,
    }


def ray_worker_threads() -> dict:
    """torch threads inside Ray actors of 1 and 0.5 CPU (Ray sets OMP_NUM_THREADS)."""
    import ray

    @ray.remote
    class Probe:
        def threads(self) -> dict:
            import torch

            return {
                "torch_threads": torch.get_num_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            }

    found = {}
    for cpus in (1.0, 0.5):
        actor = Probe.options(num_cpus=cpus).remote()
        try:
            found[f"cpu_{cpus}"] = ray.get(actor.threads.remote(), timeout=120)
        finally:
            ray.kill(actor)
    return found


def _baseline_args(data_path: Path, epochs: int) -> list[str]:
    return [
        str(DDP_SCRIPT.relative_to(REPO)),
        "--data",
        str(data_path),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(BATCH),
        "--hidden",
        ",".join(map(str, HIDDEN)),
        "--classes",
        str(CLASSES),
        "--lr",
        str(LR),
        "--seed",
        str(SEED),
    ]


def _torchrun() -> list[str]:
    local = Path(sys.executable).parent / "torchrun"
    return [str(local)] if local.exists() else [sys.executable, "-m", "torch.distributed.run"]


def run_baseline(
    kind: str, data_path: Path, epochs: int, profile: dict | None = None, stock: bool = False
) -> dict:
    """``single`` (1 process, 2 threads) or ``ddp`` (torchrun, 2 x 1 thread, gloo);
    ``stock``: with the optimizer as torch makes it by default (``jobs.stock``)."""
    from jobs.stock import STOCK_ENV

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(STOCK_ENV, None)
    if stock:
        env[STOCK_ENV] = "1"
    if kind == "single":
        cmd = [sys.executable, *_baseline_args(data_path, epochs), "--threads", "2"]
        env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
        shown = ["python", *cmd[1:]]
    else:
        launcher = [*_torchrun(), "--standalone", "--nproc_per_node", str(WORKERS)]
        cmd = [*launcher, *_baseline_args(data_path, epochs), "--threads", "1"]
        if profile:
            cmd += [
                "--profile-steps",
                str(profile["steps"]),
                "--profile-skip",
                str(profile["skip"]),
            ]
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        shown = ["torchrun", *cmd[len(launcher) - 3 :]]
    started = time.perf_counter()
    outcome: dict = {"command": " ".join(shown).replace(str(data_path), "DATA.npz")}
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BASELINE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {**outcome, "error": f"timed out after {BASELINE_TIMEOUT_S} s"}
    outcome["wall_s"] = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**outcome, "error": f"exit {proc.returncode}: " + " / ".join(tail)}
    return {**outcome, **json.loads(lines[-1])}


def run_variant(
    variant: Variant,
    data,
    epochs: int,
    storage: Path,
    attempt: int = 1,
    profile: dict | None = None,
) -> dict:
    """One ``jobs.trainer.fit``; per-epoch samples/s come from its history."""
    from jobs.spec import ModelSpec, TrainSpec
    from jobs.trainer import fit

    train = TrainSpec.model_validate(
        {
            "epochs": epochs,
            "batch_size": BATCH,
            "optimizer": {"type": "adamw", "lr": LR},
            "workers": variant.workers,
            "resources_per_worker": {"CPU": variant.cpu_per_worker},
            "deepspeed": {
                "zero_stage": variant.zero_stage,
                "precision": variant.precision,
                "pipeline_stages": variant.pipeline_stages,
            },
            "checkpoint": {"every_epochs": epochs, "keep": 1},  # only the final one
            "max_failures": 0,  # a retried run would not measure what it claims
            "profile": profile if variant.pipeline_stages == 1 else None,
        }
    )
    model = ModelSpec(type="mlp", params={"hidden_sizes": HIDDEN})

    def progress(event) -> None:
        from jobs.events import EpochEnded

        if isinstance(event, EpochEnded):
            m = event.metrics
            _log(
                f"  {variant.name} epoch {m['epoch']}/{epochs}: "
                f"{m['samples_per_s']:,.0f} samples/s, loss {m['train_loss']:.3f}"
            )

    outcome = {**asdict(variant), "rows": data.info.n_train, "epochs": epochs}
    started = time.perf_counter()
    try:
        result = fit(
            model,
            train,
            data,
            seed=SEED,
            run_name=f"bench-{variant.name}-{attempt}",  # a reused name would resume that run
            storage_path=str(storage),
            on_event=progress,
        )
    except Exception as exc:  # one failed variant must not end the benchmark
        return {
            **outcome,
            "wall_s": time.perf_counter() - started,
            "error": f"{type(exc).__name__}: {exc}"[:500],
        }
    rates = [m["samples_per_s"] for m in sorted(result.history, key=lambda m: m["epoch"])]
    return {
        **outcome,
        "wall_s": time.perf_counter() - started,
        "epoch_samples_per_s": rates,
        "samples_per_s": steady_median(rates),
        "final_train_loss": result.metrics.get("train_loss"),
        "final_val_accuracy": result.metrics.get("val_accuracy"),
        "profile": [p.model_dump() for p in result.profile],
    }


# --------------------------------------------------------------------------- entry points


def fast_bf16() -> bool:
    """Whether this CPU has bf16 units (avx512_bf16 or AMX): the trainer's own test."""
    import torch

    from jobs.worker import slow_bf16_warning

    return slow_bf16_warning("bf16", torch.device("cpu")) is None


def _start_ray() -> None:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def run_stock(sizes: Sizes, full, small, data_path: Path, storage: Path, bf16_fast: bool) -> dict:
    """The "before" figures: the trainer and the DDP baseline without the step tuning, on
    a Ray started with ``ORCH_STOCK_DEEPSPEED=1`` (its workers inherit it)."""
    import ray

    from jobs.stock import STOCK_ENV

    os.environ[STOCK_ENV] = "1"
    try:
        _log("before: Ray with ORCH_STOCK_DEEPSPEED=1 (no step tuning)")
        _start_ray()
        try:
            stock: dict = {"ddp": run_baseline("ddp", data_path, sizes.epochs, stock=True)}
            _log(f"  before: torchrun DDP: {_rate_text(stock['ddp'])}")
            stock["variants"] = []
            for variant in (v for v in VARIANTS if v.name in STOCK_VARIANTS):
                data, epochs = _sized(variant, sizes, full, small, bf16_fast)
                stock["variants"].append(run_variant(variant, data, epochs, storage, attempt=0))
                _log(f"  before: {variant.label}: {_rate_text(stock['variants'][-1])}")
        finally:
            ray.shutdown()
    finally:
        os.environ.pop(STOCK_ENV, None)
    return stock


def _sized(variant: Variant, sizes: Sizes, full, small, bf16_fast: bool):
    """The data and epochs of a variant: bf16 on a CPU without bf16 units gets the small set."""
    if variant.precision == "bf16" and not bf16_fast:
        return small, sizes.bf16_epochs
    return full, sizes.epochs


def run(quick: bool = False) -> dict:
    """Measure everything; returns the raw numbers (bench/results/train_throughput.json)."""
    sizes = QUICK if quick else FULL
    profile = {"steps": sizes.profile_steps, "skip": sizes.profile_skip}
    started = time.perf_counter()
    results: dict = {
        **result_header("train_throughput", quick, QUICK_COMMAND if quick else COMMAND),
        "config": {
            "features": FEATURES,
            "classes": CLASSES,
            "hidden_sizes": HIDDEN,
            "global_batch": BATCH,
            "workers": WORKERS,
            "optimizer": f"adamw lr={LR}",
            "seed": SEED,
            "warmup_epochs_skipped": 1,
            "profile": profile,
            **asdict(sizes),
        },
    }
    if results["load_average_before"] > 0.5:
        _log(f"warning: load average {results['load_average_before']}: other work is running")

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.25"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    bf16_fast = results["fast_bf16"] = fast_bf16()
    results["gpu"] = _gpu_note()
    x_train, y_train, x_val, y_val = make_data(sizes.rows, sizes.val_rows)
    results["flops_per_sample"] = flops_per_sample()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        data_path = tmp_path / "train.npz"
        np.savez(data_path, x=x_train, y=y_train)
        full = prepared(x_train, y_train, x_val, y_val)
        small = prepared(x_train[: sizes.bf16_rows], y_train[: sizes.bf16_rows], x_val, y_val)
        results["stock"] = run_stock(sizes, full, small, data_path, tmp_path / "ray", bf16_fast)

        _log("starting Ray (2 CPUs)")
        _start_ray()
        try:
            results["ray_worker_threads"] = ray_worker_threads()
            _log(f"threads in Ray workers: {results['ray_worker_threads']}")
            _log(f"matmul peak ({MATMUL_N}^3 fp32, {sizes.bf16_matmul_n}^3 bf16, 2 threads)")
            results["peak"] = {
                "fp32": matmul_peak("fp32", MATMUL_N, repeats=5, budget_s=10),
                "bf16": matmul_peak("bf16", sizes.bf16_matmul_n, repeats=3, budget_s=20),
            }
            _log(
                "peak GFLOP/s: "
                + ", ".join(f"{k} {v['gflops']:.1f}" for k, v in results["peak"].items())
            )

            baselines: dict = {"ddp_runs": []}
            _log("baseline: single process, 2 threads")
            baselines["single"] = run_baseline("single", data_path, sizes.epochs)
            _log(f"  {_rate_text(baselines['single'])}")
            _log("baseline: torchrun DDP 2 x 1 thread (run 1, profiled)")
            baselines["ddp_runs"].append(run_baseline("ddp", data_path, sizes.epochs, profile))
            _log(f"  {_rate_text(baselines['ddp_runs'][-1])}")

            variants = []
            for variant in VARIANTS:
                data, epochs = _sized(variant, sizes, full, small, bf16_fast)
                _log(f"trainer: {variant.label} ({data.info.n_train} rows x {epochs} epochs)")
                variants.append(
                    run_variant(variant, data, epochs, tmp_path / "ray", profile=profile)
                )
                _log(f"  {_rate_text(variants[-1])} (fit wall {variants[-1]['wall_s']:.0f} s)")
            results["variants"] = variants

            _log("baseline: torchrun DDP 2 x 1 thread (run 2)")
            baselines["ddp_runs"].append(run_baseline("ddp", data_path, sizes.epochs))
            _log(f"  {_rate_text(baselines['ddp_runs'][-1])}")
            results["baselines"] = baselines

            # The goal compares best-of-2 with best-of-2, interleaved, so that drift in the
            # machine's speed during the run favours neither side.
            goal_variant = next(v for v in VARIANTS if v.name == GOAL_VARIANT)
            _log(f"trainer: {goal_variant.label} again (goal, run 2)")
            results["goal_repeat"] = run_variant(
                goal_variant, full, sizes.epochs, tmp_path / "ray", attempt=2
            )
            _log(f"  {_rate_text(results['goal_repeat'])}")
        finally:
            ray.shutdown()
    results["load_average_after"] = load_average()
    results["duration_s"] = time.perf_counter() - started
    return results


def _gpu_note() -> str:
    """The GPU section's one line: skipped without CUDA (the CPU bench is what runs here)."""
    import torch

    if not torch.cuda.is_available():
        return "skipped: no GPU on this machine (torch.cuda.is_available() is False)"
    return f"GPU present ({torch.cuda.get_device_name(0)}): not measured by this CPU bench"


def _rate_text(outcome: dict) -> str:
    if outcome.get("error"):
        return f"FAILED: {outcome['error']}"
    return (
        f"{outcome['samples_per_s']:,.0f} samples/s (epochs: "
        + ", ".join(f"{r:,.0f}" for r in outcome["epoch_samples_per_s"])
        + ")"
    )


def reference_ddp(results: dict) -> float | None:
    """The faster of the DDP runs: the conservative reference for the goal."""
    rates = [r["samples_per_s"] for r in results["baselines"]["ddp_runs"] if not r.get("error")]
    return max(rates) if rates else None


def goal_runs(results: dict) -> list[float]:
    """samples/s of each ZeRO-0 fp32 run: the one in the table and the repeat at the end."""
    runs = [v for v in results["variants"] if v["name"] == GOAL_VARIANT]
    runs.append(results.get("goal_repeat", {}))
    return [r["samples_per_s"] for r in runs if r.get("samples_per_s")]


def _rate(variants: list[dict], name: str) -> float | None:
    found = [v.get("samples_per_s") for v in variants if v["name"] == name]
    return found[0] if found and found[0] else None


def ratios(results: dict) -> dict[str, float | None]:
    """After: each goal variant / the faster DDP run (ZeRO-0: the better of its two runs),
    and ZeRO-0 bf16 / ZeRO-0 fp32."""
    ddp = reference_ddp(results)
    out: dict[str, float | None] = {}
    for name in GOALS:
        rate = _after_rate(results, name)
        out[name] = rate / ddp if rate and ddp else None
    fp32 = _after_rate(results, GOAL_VARIANT)
    bf16 = _rate(results["variants"], "zero0-bf16")
    out["bf16"] = bf16 / fp32 if bf16 and fp32 else None
    return out


def stock_ratios(results: dict) -> dict[str, float | None]:
    """Before: the same ratios for the stock runs (against the stock DDP run)."""
    stock = results.get("stock") or {}
    ddp = stock.get("ddp", {}).get("samples_per_s")
    out: dict[str, float | None] = {}
    for name in GOALS:
        rate = _rate(stock.get("variants", []), name)
        out[name] = rate / ddp if rate and ddp else None
    fp32 = _rate(stock.get("variants", []), "zero0-fp32")
    bf16 = _rate(stock.get("variants", []), "zero0-bf16")
    out["bf16"] = bf16 / fp32 if bf16 and fp32 else None
    return out


def _verdict(ratio: float | None, must: float, goal: float | None) -> str:
    if ratio is None:
        return "FAIL (no number)"
    met = "PASS" if ratio >= must else "FAIL"
    reached = f"; goal {goal}x {'reached' if ratio >= goal else 'not reached'}" if goal else ""
    return f"{met} ({ratio:.2f}x, must {must}x{reached})"


def goal_lines(results: dict) -> list[str]:
    """One line per acceptance figure of issue 32."""
    found = ratios(results)
    lines = []
    for name, (must, goal) in GOALS.items():
        label = next(v.label for v in VARIANTS if v.name == name)
        lines.append(f"- **{label} vs torchrun DDP: {_verdict(found[name], must, goal)}**")
    if results.get("fast_bf16"):
        verdict = _verdict(found["bf16"], *BF16_GOAL)
        lines.append(f"- **ZeRO-0 bf16 vs fp32 (this CPU has bf16 units): {verdict}**")
    else:
        ratio = found["bf16"]
        lines.append(
            "- **ZeRO-0 bf16 vs fp32: this CPU has no avx512_bf16 or AMX, so bf16 is emulated "
            f"and slower ({fmt(ratio, 2, 'x')}): use precision fp32 here**"
        )
    lines.append(f"- GPU: {results.get('gpu', 'skipped: not measured')}")
    return lines


def before_after_table(results: dict) -> str:
    before, after = stock_ratios(results), ratios(results)
    labels = {name: next(v.label for v in VARIANTS if v.name == name) for name in GOALS}
    labels["bf16"] = "ZeRO-0 bf16 / ZeRO-0 fp32"
    rows = [
        [
            label if key == "bf16" else f"{label} / torchrun DDP",
            fmt(before[key], 2, "x"),
            fmt(after[key], 2, "x"),
        ]
        for key, label in labels.items()
    ]
    stock = results.get("stock") or {}
    ddp_stock = stock.get("ddp", {}).get("samples_per_s")
    raw = [["torchrun DDP", fmt(ddp_stock), fmt(reference_ddp(results))]]
    for v in stock.get("variants", []):
        raw.append(
            [
                f"ours: {v['label']}",
                fmt(v.get("samples_per_s")),
                fmt(_after_rate(results, v["name"])),
            ]
        )
    return (
        md_table(["figure", "before (stock)", "after"], rows, "lrr")
        + "\n\n"
        + md_table(["samples/s", "before (stock)", "after"], raw, "lrr")
    )


def _after_rate(results: dict, name: str) -> float | None:
    if name == GOAL_VARIANT and goal_runs(results):
        return max(goal_runs(results))
    return _rate(results["variants"], name)


def profile_table(results: dict) -> str:
    """Rank 0's step, phase by phase (ms), for DDP and each profiled variant."""
    phases = ("data_wait_ms", "forward_ms", "backward_ms", "optimizer_step_ms", "communication_ms")
    rows = []
    best = results["baselines"]["ddp_runs"][0]
    runs = [("torchrun DDP (torch)", best.get("profile") or [])]
    runs += [(f"ours: {v['label']}", v.get("profile") or []) for v in results["variants"]]
    for label, profiles in runs:
        if not profiles:
            continue
        p = profiles[0]
        rows.append([label, fmt(p["step_ms"], 1)] + [fmt(p[k], 1) for k in phases])
    return md_table(
        ["run (rank 0)", "step", "data wait", "forward", "backward", "optimizer", "exposed comm."],
        rows,
        "lrrrrrr",
    )


def render(results: dict) -> str:
    """The BENCHMARKS.md section for one results file."""
    cfg = results["config"]
    peak = results["peak"]
    flops = results["flops_per_sample"]
    ddp = reference_ddp(results)
    single_run = results["baselines"]["single"]
    single = None if single_run.get("error") else single_run["samples_per_s"]

    def row(label: str, outcome: dict, precision: str, rows: int, epochs: int) -> list[str]:
        if outcome.get("error"):
            return [
                label,
                f"{rows} x {epochs}",
                f"failed: {outcome['error'][:120]}",
                "–",
                "–",
                "–",
                "–",
                "–",
            ]
        rate = outcome["samples_per_s"]
        gflops = rate * flops / 1e9
        return [
            label,
            f"{rows} x {epochs}",
            fmt(rate),
            fmt(rate / ddp, 2, "x") if ddp else "–",
            fmt(rate / single, 2, "x") if single else "–",
            fmt(gflops, 1),
            fmt(100 * gflops / peak[precision]["gflops"], 0, "%"),
            fmt(100 * spread(outcome["epoch_samples_per_s"]), 0, "%")
            if spread(outcome["epoch_samples_per_s"]) is not None
            else "–",
        ]

    ddp_runs = results["baselines"]["ddp_runs"]
    best_ddp = max(
        (r for r in ddp_runs if not r.get("error")),
        key=lambda r: r["samples_per_s"],
        default=ddp_runs[0],
    )
    rows = [
        row("single process, 2 threads (torch)", single_run, "fp32", cfg["rows"], cfg["epochs"]),
        row(
            "torchrun DDP 2 x 1 thread, gloo (torch)", best_ddp, "fp32", cfg["rows"], cfg["epochs"]
        ),
    ]
    for v in results["variants"]:
        mark = " †" if v["precision"] == "bf16" else ""
        rows.append(row(f"ours: {v['label']}{mark}", v, v["precision"], v["rows"], v["epochs"]))

    bf16_over_peak = any(
        v["precision"] == "bf16"
        and (v.get("samples_per_s") or 0) * flops / 1e9 > peak["bf16"]["gflops"]
        for v in results["variants"]
    )
    ddp_text = ", ".join("failed" if r.get("error") else fmt(r["samples_per_s"]) for r in ddp_runs)
    threads = results.get("ray_worker_threads", {})
    lines = [
        f"## {TITLE}",
        "",
        *goal_lines(results),
        "",
        *run_lines(
            results, ONLY_COMMAND, " (anything else running on the machine lowers every number)."
        ),
        f"- Work: MLP {cfg['features']} -> {' -> '.join(map(str, cfg['hidden_sizes']))} -> "
        f"{cfg['classes']}, global batch {cfg['global_batch']}, {cfg['optimizer']}, generated "
        f"data (seed {cfg['seed']}); every data-parallel rank trains on its contiguous slice of "
        f"each global batch. {flops / 1e6:.1f} MFLOP per training sample "
        "(6 x weight-matrix parameters).",
        f"- samples/s: global samples per second, median over epochs after "
        f"{cfg['warmup_epochs_skipped']} warm-up epoch; training loop only (ours: the "
        "worker's `samples_per_s`, which includes Ray Data batch streaming, not validation "
        "or checkpoints). Rows column: training rows x epochs.",
        f"- Peak: best {peak['fp32']['n']}^3 fp32 matmul on 2 threads "
        f"{peak['fp32']['gflops']:.1f} GFLOP/s; {peak['bf16']['n']}^3 bf16 "
        f"{peak['bf16']['gflops']:.1f} GFLOP/s ({peak['bf16']['tries']} tries). "
        "% of peak uses the variant's precision."
        + (
            " bf16 above 100%: here bf16 matmuls get slower as they grow (oneDNN's fast bf16 "
            "path needs avx512), so the big product understates what training's smaller "
            "ones reach."
            if bf16_over_peak
            else ""
        ),
        f"- torchrun DDP ran before and after the trainer variants ({ddp_text} samples/s); "
        "the faster run is the table's reference. The goal compares the better of two "
        "interleaved ZeRO-0 fp32 runs ("
        + ", ".join(f"{r:,.0f}" for r in goal_runs(results))
        + " samples/s: one in the table's order, one after the second DDP run) with it.",
        "- Threads in Ray workers (set by Ray from num_cpus): "
        + ", ".join(f"{k}: {v.get('torch_threads')}" for k, v in threads.items()),
        (
            f"- † bf16 variants train on the same rows as fp32: this CPU has bf16 units "
            f"(matmul {peak['bf16']['gflops']:.1f} vs {peak['fp32']['gflops']:.1f} GFLOP/s fp32)."
            if results.get("fast_bf16")
            else f"- † bf16 variants train on the first {cfg['bf16_rows']} rows for "
            f"{cfg['bf16_epochs']} epochs to keep the run short: CPUs without avx512_bf16 or "
            f"AMX run bf16 matmuls far slower than fp32 (here {peak['bf16']['gflops']:.1f} vs "
            f"{peak['fp32']['gflops']:.1f} GFLOP/s). Their ratios compare with the fp32 baselines."
        ),
        "- Before/after, in this one run: before = the trainer and the DDP baseline with "
        "`ORCH_STOCK_DEEPSPEED=1` (DeepSpeed's own ZeRO-0 all-reduce after backward, its bf16 "
        "optimizer, its ZeRO defaults, torch's default Adam: `jobs/stock.py`), on a Ray "
        "started with it; after = the defaults (DDP's overlapped all-reduce at ZeRO-0, bf16 "
        "autocast at ZeRO-0, ZeRO 1-3 without contiguous gradients or reduce-scatter on gloo, "
        "fused Adam, in the DDP baseline too). Gradient clipping is off in both (the spec's 0; "
        "DeepSpeed's own default had clipped at 1.0 before this change). The last run before "
        "issue 32's changes (2026-12-01, an Intel Xeon with AMX) measured ZeRO-0 0.71x, ZeRO-2 "
        "0.61x, ZeRO-3 0.47x DDP and bf16 1.23x fp32 with that clipping on; the before column "
        "here has it off, so it isolates the rest.",
        "",
        before_after_table(results),
        "",
        f"Where rank 0's step goes (ms; `train.profile`, steps {cfg['profile']['skip'] + 1}-"
        f"{cfg['profile']['skip'] + cfg['profile']['steps']}, in the warm-up epoch; the DDP "
        "baseline profiled by the same code). Exposed communication: a collective running "
        "while the phase does nothing else; what ZeRO-2/3 add over DDP is mostly that: on "
        "CPU, DeepSpeed has no stream to overlap its reduce and gathers with compute, so "
        "they wait in line (DDP's reducer overlaps its buckets on gloo's own thread).",
        "",
        profile_table(results),
        "",
        md_table(
            [
                "variant",
                "rows x epochs",
                "samples/s",
                "vs torchrun DDP",
                "vs single process",
                "GFLOP/s",
                "% of peak",
                "epoch spread",
            ],
            rows,
            "lrrrrrrr",
        ),
    ]
    if results.get("quick"):
        lines.insert(2, "> Quick smoke-test sizes: not a measurement.\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "train_throughput", *sys.argv[1:]]))
