"""Small helpers shared by the tests that drive real clusters and servers."""

from __future__ import annotations

import json
import os
import time
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
