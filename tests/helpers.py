"""Small helpers shared by the tests that drive real clusters and servers."""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path


def wait_for(check, timeout_s: float, what: str, poll_s: float = 0.5, explain=None):
    """The first truthy value of ``check()``; fails the test after ``timeout_s``.

    ``explain`` (a callable returning text) is called on timeout so that a failure in CI
    says what the system was doing, not only that it was late."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    detail = ""
    if explain is not None:
        try:
            detail = "\n" + str(explain())
        except Exception as error:  # the explanation must not hide the timeout
            detail = f"\n(explain failed: {error!r})"
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")


def kill_server(queue_dir: Path, sig) -> int | None:
    """Signal the queue server recorded under ``queue_dir`` (by its PID); its PID or None."""
    try:
        pid = json.loads((queue_dir / "server.json").read_text())["pid"]
        os.kill(pid, sig)
        return pid
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def start_mlflow_server(folder: Path, port: int, timeout_s: float = 60):
    """A real `mlflow server` on 127.0.0.1:port over a SQLite store in ``folder`` (one
    worker, no job execution: 0.5 GiB instead of 2). Stop it with ``stop_process_group``."""
    import subprocess
    import sys

    import httpx

    mlflow = str(Path(sys.executable).with_name("mlflow"))
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / f"server-{port}.log", "a")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    stop_process_group(process)
    raise RuntimeError(
        f"mlflow server did not start: {(folder / f'server-{port}.log').read_text()}"
    )


def stop_process_group(process, timeout_s: float = 20) -> None:
    """SIGTERM to a process group we started (by its leader's PID), then SIGKILL."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def explain_queue(client, *jobs) -> str:
    """What the queue, the jobs, Ray and the machine were doing (printed when a wait times
    out): every job with its reason, Ray's free resources and running jobs, the scheduler's
    last completed pass and its last error, the server's log tail, the busiest processes."""
    import subprocess
    import time

    from ray.job_submission import JobSubmissionClient

    cluster = client.cluster()
    now = time.time()
    last = cluster.get("last_pass_at")
    lines = [
        f"Ray available: {cluster['available']} of {cluster['total']}; free for admission: "
        f"{cluster['free_for_admission']}",
        f"last completed scheduling pass: {f'{now - last:.1f} s ago' if last else 'never'}; "
        f"last pass error: {cluster.get('last_pass_error')}; pass running since: "
        f"{cluster.get('pass_running_since')}",
        f"Ray jobs not ended: {cluster.get('ray_jobs_running')}",
    ]
    for info in client.jobs():
        lines.append(f"{info.id} {info.name}: {info.state} ({info.reason}) history={info.history}")
    for job in jobs:
        lines.append(f"--- logs of {job.id}:\n" + client.logs(job.id)[1][-3000:])
    import httpx

    server = httpx.get(f"{client.server_url()}/server", headers=client.headers, timeout=10).json()
    if server.get("ray_submission_id"):
        ray_jobs = JobSubmissionClient(client.dashboard_url, headers=client.headers)
        tail = ray_jobs.get_job_logs(server["ray_submission_id"])[-4000:]
        lines.append(f"--- the queue server's log tail:\n{tail}")
    top = subprocess.run(["ps", "-eo", "pid,pgid,pcpu,etimes,args", "--sort=-pcpu"],
                         capture_output=True, text=True).stdout  # fmt: skip
    lines.append("busiest processes:\n" + "\n".join(top.splitlines()[:15]))
    return "\n".join(lines)


def head_idle_problems(dashboard_url: str, token: str) -> list[str]:
    """Why a shared head is not idle: Ray jobs still running (other than queue servers),
    CPUs in use, live placement groups. Empty when the next test can start on it clean."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    problems = []
    jobs = httpx.get(f"{dashboard_url}/api/jobs/", headers=headers, timeout=30).json()
    for job in jobs:
        if (
            job["status"] in ("PENDING", "RUNNING")
            and (job.get("metadata") or {}).get("orch") != "queue server"
        ):
            problems.append(f"Ray job {job['submission_id']} is {job['status']}")
    groups = httpx.get(
        f"{dashboard_url}/api/v0/placement_groups",
        params={"detail": "true", "limit": 1000},
        headers=headers,
        timeout=30,
    ).json()["data"]["result"]["result"]
    for group in groups:
        if group["state"] != "REMOVED":
            problems.append(f"placement group {group['placement_group_id']} is {group['state']}")
    status = httpx.get(f"{dashboard_url}/api/cluster_status", headers=headers, timeout=30).json()
    usage = status["data"]["autoscalingStatus"] or ""
    for used, total in re.findall(r"([\d.]+)/([\d.]+) CPU", usage)[:1]:
        if float(used) > 0:
            problems.append(f"{used} of {total} CPUs in use")
    return problems


def stop_orch_jobs(dashboard_url: str, token: str) -> list[str]:
    """Stop the queue's Ray jobs (metadata ``orch_job``) a failed test left running."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    stopped = []
    for job in httpx.get(f"{dashboard_url}/api/jobs/", headers=headers, timeout=30).json():
        if job["status"] in ("PENDING", "RUNNING") and "orch_job" in (job.get("metadata") or {}):
            httpx.post(
                f"{dashboard_url}/api/jobs/{job['submission_id']}/stop", headers=headers, timeout=30
            )
            stopped.append(job["submission_id"])
    return stopped


def wait_serve_stopped(timeout_s: float = 60) -> None:
    """Until no Serve controller or proxy of an earlier ``serve.shutdown()`` is alive on the
    connected Ray: the shutdown returns before its proxies are gone, and a ``serve.start``
    in that window has its new proxy killed by the old shutdown."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this Ray, not another worker's

    def stopped() -> bool:
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        names = ("ServeController", "HAProxyManager", "ProxyActor")
        return not [a for a in alive if a.class_name in names]

    wait_for(stopped, timeout_s, "the earlier Serve to stop")


def spec_text(name: str, source: str, **sections) -> str:
    """A small pipeline YAML reading ``source`` (classification of column y)."""
    import yaml

    doc = {
        "name": name,
        "data": {"source": source, "task": "classification", "label": "y"},
        "model": {"type": "mlp"},
        **sections,
    }
    return yaml.safe_dump(doc)


PACKAGES = ("orchestrator", "jobs", "tuning", "serve", "cluster")
REPO = Path(__file__).resolve().parents[1]


def our_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of our packages."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


@contextmanager
def phase(title: str):
    """One phase of a story test: whatever fails inside says which phase it was."""
    try:
        yield
    except Exception as exc:
        raise AssertionError(f"phase {title}: {type(exc).__name__}: {exc}") from exc
