"""README's tour, run as written: validate, `orch run` (train, register, serve in the
foreground), a curl to the served model, `orch models show`, `orch ui`, then Ctrl-C,
which leaves nothing listening. Only the ports differ: free ones instead of 8000/5000."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import stop_process_group, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tour() -> list[str]:
    """The commands of README's block marked ``<!-- run: tests/test_readme.py ... -->``."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- run: tests/test_readme\.py[^>]*-->\n```bash\n(.*?)```", text, re.S)
    assert block, "README has no tour block marked for this test"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path):
    commands = tour()
    assert [c.split()[:2] for c in commands] == [
        ["source", ".venv/bin/activate"], ["orch", "validate"], ["orch", "run"],
        ["curl", "-s"], ["orch", "models"], ["orch", "ui"],
    ]  # fmt: skip
    serve_port, ui_port = free_port(), free_port()
    spec = (ROOT / "examples" / "quickstart.yaml").read_text()
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "quickstart.yaml").write_text(
        spec.replace("serve: {name: iris,", f"serve: {{port: {serve_port}, name: iris,")
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(ORCH_HOME=str(tmp_path / ".orch"), PATH=f"{BIN}:{env['PATH']}")

    def run(command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        return done

    validate, orch_run, curl, show, ui = commands[1:]
    assert "iris-quickstart" in run(validate).stdout
    serving = subprocess.Popen(
        shlex.split(orch_run), cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        endpoint = f"http://127.0.0.1:{serve_port}/iris"
        wait_for(lambda: _up(f"{endpoint}/healthz") or serving.poll() is not None, 400,
                 "orch run to train, register and serve")  # fmt: skip
        assert serving.poll() is None, serving.stdout.read()[-3000:]
        answer = json.loads(run(curl.replace("127.0.0.1:8000", f"127.0.0.1:{serve_port}")).stdout)
        assert answer["predictions"][0]["class"] == 0, answer  # setosa's measurements
        assert answer["model"]["name"] == "iris-classifier"
        shown = run(show).stdout
        assert "iris-classifier" in shown and "dynamic-int8" in shown, shown
        mlflow_ui = subprocess.Popen(
            [*shlex.split(ui), "--port", str(ui_port)], cwd=tmp_path, env=env,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: _up(f"http://127.0.0.1:{ui_port}/health"), 120, "orch ui")
        finally:
            stop_process_group(mlflow_ui)
        os.killpg(serving.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the group
        assert serving.wait(timeout=120) == 0, serving.stdout.read()[-3000:]
        assert not _listening(serve_port)  # no HAProxy or proxy left behind
    finally:
        stop_process_group(serving)
