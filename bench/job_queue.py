"""The job queue: scheduling decisions per second, and submit-to-running latency.

1. Decisions: 10,000 jobs (mixed priorities and demands, from 100 users in 10 teams, every
   team with a CPU and a running-jobs quota) are enqueued in the real SQLite store; one
   scheduler pass reads the queue, orders it fairly between teams and decides admit or wait
   (with the reason) for every job. decisions/s = jobs decided / pass time, store read
   included.
2. Latency, side by side on one real `ray start --head` (token auth on): `orch submit`
   (CLI process -> queue server -> admission -> Ray Jobs API) against a raw
   `ray job submit --no-wait` (CLI process -> Ray Jobs API) of the same entrypoint
   (`python -m orchestrator run spec.yaml --json`), each timed from the CLI's start to the
   Ray job reaching RUNNING. The queue server is already up (it starts once per cluster).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import describe_machine, fmt, md_table, result_header

# The file is job_queue.py, not queue.py: scripts run with bench/ first on sys.path, where a
# queue.py shadows the standard library's queue (torch imports it).
NAME = "queue"
TITLE = "Job queue: scheduling decisions and submit-to-running latency"
USERS, TEAMS = 100, 10  # the decisions' jobs belong to 100 users in 10 teams (issue 16)
ORDER = 40
COMMAND = "make bench  (python -m bench --only queue)"
SPEC = """\
name: queue-bench
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [8]}}
train: {epochs: 1, batch_size: 16, workers: 1, resources_per_worker: {CPU: 1}}
"""


def _log(message: str) -> None:
    print(f"[queue] {message}", file=sys.stderr, flush=True)


def _decisions(n_jobs: int, passes: int) -> dict:
    from orchestrator.scheduling.identity import Quota, Quotas
    from orchestrator.scheduling.policy import PriorityPolicy
    from orchestrator.scheduling.record import JobInfo
    from orchestrator.scheduling.store import JobStore

    rng = random.Random(0)
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(Path(tmp) / "queue.db")
        jobs = [
            JobInfo(
                id="",
                name=f"j{i}",
                pipeline="bench",
                priority=rng.choice([0, 50, 100, rng.randrange(0, 200)]),
                demand={"CPU": rng.choice([0.5, 1.0, 2.0, 4.0])},
                spec_path="bench.yaml",
                spec_text=SPEC,
                cwd="/",
                enqueued_at=now - rng.uniform(0, 3600),
                owner=f"user{i % USERS}",
                team=f"team{i % USERS // (USERS // TEAMS)}",
            )
            for i in range(n_jobs)
        ]
        start = time.perf_counter()
        store.add_many(jobs)
        bulk_s = time.perf_counter() - start
        # one acknowledged submit at a time, as the API does (fsync per job)
        singles = 200
        start = time.perf_counter()
        for job in jobs[:singles]:
            store.add(job.model_copy(update={"id": "", "seq": 0}))
        single_s = time.perf_counter() - start
        policy = PriorityPolicy()
        active = [
            JobInfo(
                id=f"run-{i}",
                name="r",
                pipeline="bench",
                priority=0,
                state="running",
                demand={"CPU": 2.0},
                spec_path="b",
                cwd="/",
                team=f"team{i}",
            )
            for i in range(8)
        ]
        # every team capped (CPU and running jobs) and every user too: each decision checks
        # its team's quota and its owner's
        quotas = Quotas(
            teams={f"team{t}": Quota(cpus=8, running=3) for t in range(TEAMS)},
            users={f"user{u}": Quota(cpus=4, running=2) for u in range(USERS)},
        )
        pass_s, plan_s, decided = [], [], 0
        for _ in range(passes):
            start = time.perf_counter()
            queued = store.queued()
            loaded = time.perf_counter()
            plan = policy.plan(queued, active, {"CPU": 6.0}, total={"CPU": 64.0}, quotas=quotas)
            end = time.perf_counter()
            pass_s.append(end - start)
            plan_s.append(end - loaded)
            decided = plan.decisions
        store.close()
    return {
        "jobs": len(jobs) + singles,
        "decided_per_pass": decided,
        "enqueue_bulk_jobs_per_s": n_jobs / bulk_s,
        "enqueue_single_jobs_per_s": singles / single_s,
        "pass_s": statistics.median(pass_s),
        "policy_only_s": statistics.median(plan_s),
        "decisions_per_s": decided / statistics.median(pass_s),
        "policy_decisions_per_s": decided / statistics.median(plan_s),
    }


def _wait_running(ray_jobs, submission_id: str | None, find=None, timeout_s: float = 120) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        sid = submission_id or find()
        if sid:
            try:
                if str(ray_jobs.get_job_status(sid)) == "RUNNING":
                    return time.perf_counter()
            except RuntimeError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"{submission_id or 'the job'} did not reach RUNNING in {timeout_s} s")


def _latency(rounds: int) -> dict:
    from ray.job_submission import JobSubmissionClient

    from cluster.local import start_head
    from orchestrator.queue_client import QueueClient

    work = Path(tempfile.mkdtemp(prefix="orch-queue-bench-"))
    head = start_head(work / "head", num_cpus=2)
    env = {
        **head.env(),
        "ORCH_HOME": str(work / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'home' / 'mlflow.db'}",
        "DS_ACCELERATOR": "cpu",
    }
    spec = work / "spec.yaml"
    spec.write_text(SPEC)
    bin_dir = Path(sys.executable).parent
    ray_jobs = JobSubmissionClient(
        head.dashboard_url, headers={"Authorization": f"Bearer {head.token}"}
    )
    saved = dict(os.environ)
    os.environ.update(env)
    raw_s, orch_s = [], []
    try:
        queue = QueueClient(head.dashboard_url)
        start = time.perf_counter()
        queue.server_url()
        server_start_s = time.perf_counter() - start
        for i in range(rounds):
            # raw: ray job submit of the same entrypoint orch would run
            sid = f"raw-{i}-{os.getpid()}"
            start = time.perf_counter()
            subprocess.run(
                [str(bin_dir / "ray"), "job", "submit", "--no-wait", "--address",
                 head.dashboard_url, "--submission-id", sid, "--entrypoint-num-cpus", "0",
                 "--", sys.executable, "-m", "orchestrator", "run", str(spec), "--json"],
                env=env, cwd=work, check=True, capture_output=True,
            )  # fmt: skip
            raw_s.append(_wait_running(ray_jobs, sid) - start)
            ray_jobs.stop_job(sid)
            _wait_free(queue)
            # ours: orch submit, through the queue server
            before = {j.id for j in queue.jobs()}
            start = time.perf_counter()
            subprocess.run(
                [str(bin_dir / "orch"), "submit", str(spec), "--address", head.dashboard_url],
                env=env, cwd=work, check=True, capture_output=True,
            )  # fmt: skip
            submitted_at = time.perf_counter()
            new = [j for j in queue.jobs() if j.id not in before][0]
            running = _wait_running(
                ray_jobs, None, find=lambda new=new: queue.info(new.id).submission_id
            )
            orch_s.append(running - start)
            _log(
                f"round {i}: raw {raw_s[-1]:.2f} s, orch {orch_s[-1]:.2f} s "
                f"(CLI returned after {submitted_at - start:.2f} s)"
            )
            queue.cancel(new.id)
            _wait_free(queue)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _stop_server(work / "home" / "queue")
        head.stop()
    return {
        "rounds": rounds,
        "server_start_s": server_start_s,
        "raw_s": raw_s,
        "orch_s": orch_s,
        "raw_median_s": statistics.median(raw_s),
        "orch_median_s": statistics.median(orch_s),
        "ratio": statistics.median(orch_s) / statistics.median(raw_s),
    }


def _wait_free(queue) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        active = [j for j in queue.jobs() if not j.terminal]
        if not active and queue.cluster()["available"].get("CPU", 0) >= 2:
            return
        time.sleep(0.2)


def _stop_server(queue_dir: Path) -> None:
    import json
    import signal

    try:
        os.kill(json.loads((queue_dir / "server.json").read_text())["pid"], signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def run(quick: bool = False) -> dict:
    results = result_header("queue", quick, COMMAND)
    n = 1000 if quick else 10_000
    _log(f"enqueue {n} jobs and time scheduler passes")
    results["decisions"] = _decisions(n, passes=3 if quick else 5)
    _log(f"decisions: {results['decisions']['decisions_per_s']:.0f}/s")
    results["latency"] = _latency(rounds=2 if quick else 5)
    return results


def render(results: dict) -> str:
    d, lat = results["decisions"], results["latency"]
    goals = md_table(
        ["goal", "measured", ""],
        [
            [
                f"scheduling decisions >= 1,000/s with {d['jobs']:,} jobs queued from "
                f"{USERS} users in {TEAMS} teams, team and user quotas and fair share on",
                f"{d['decisions_per_s']:,.0f}/s ({d['decided_per_pass']:,} decisions in "
                f"{d['pass_s'] * 1000:.0f} ms, SQLite read included)",
                "met" if d["decisions_per_s"] >= 1000 else "**NOT met**",
            ],
            [
                "`orch submit` submit-to-running <= 1.2x raw `ray job submit`",
                f"{lat['orch_median_s']:.2f} s vs {lat['raw_median_s']:.2f} s "
                f"({lat['ratio']:.2f}x, median of {lat['rounds']})",
                "met" if lat["ratio"] <= 1.2 else "**NOT met**",
            ],
        ],
    )
    details = md_table(
        ["measure", "value"],
        [
            ["jobs in the store", f"{d['jobs']:,}"],
            ["enqueue, one transaction for all", f"{d['enqueue_bulk_jobs_per_s']:,.0f} jobs/s"],
            ["enqueue, one fsync'd transaction per job (the API)",
             f"{d['enqueue_single_jobs_per_s']:,.0f} jobs/s"],
            ["policy alone (order + decide)", f"{d['policy_decisions_per_s']:,.0f} decisions/s"],
            ["raw `ray job submit` to RUNNING, each round",
             ", ".join(fmt(s, 2) for s in lat["raw_s"])],
            ["`orch submit` to RUNNING, each round", ", ".join(fmt(s, 2) for s in lat["orch_s"])],
            ["queue server start on first use (once per cluster)",
             f"{lat['server_start_s']:.1f} s"],
        ],
    )  # fmt: skip
    return (
        f"## {TITLE}\n\n"
        f"- Command: `{results['command']}`, started {results['started_at']}.\n"
        f"- Machine: {describe_machine(results['machine'])}\n"
        "- Latency: one `ray start --head` with 2 CPUs and token auth; both paths submit "
        "`python -m orchestrator run spec.yaml --json` (1 worker, 1 CPU), timed from starting "
        "the CLI process to the Ray job's RUNNING (polled every 20 ms); each job is stopped "
        "once RUNNING.\n\n"
        f"### Goals\n\n{goals}\n\n### Details\n\n{details}\n"
    )
