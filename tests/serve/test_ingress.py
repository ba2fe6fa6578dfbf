"""Serve's two ingress modes: HAProxy (what orch starts by default; the rest of tests/serve
runs on it) and Ray's Python proxy (a cluster started with ``--ingress proxy``, or by
someone else without HAProxy in its environment): the same API either way, and a note on
how to get HAProxy when it is not there."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import assert_head_left_idle, free_port
from tests.serve.conftest import iris_pipeline, register_quick_model
from tests.serve.grpc_checks import assert_grpc_answers_and_refuses

pytestmark = pytest.mark.slow
ORCH = [sys.executable, "-m", "orchestrator"]


@pytest.mark.parametrize(
    ("asked", "ingress"),
    [("proxy", "proxy"), (None, "haproxy")],
    ids=["python-proxy-on-request", "haproxy-without-a-restart"],
)
def test_a_plain_ray_start_head_serves_http_and_grpc_through_either_ingress(
    queue_head, tmp_path, asked, ingress
):
    """A head started with a plain `ray start`, whose processes would start Serve's Python
    proxy. By default orch starts Serve there with HAProxy anyway (Ray's public
    ``controller_options``: no restart); with ``ORCH_SERVE_INGRESS=proxy`` it keeps the
    Python proxy and says how to get HAProxy. Through either: the same HTTP API, and v2
    over gRPC, where Triton's client infers with the key and gets UNAUTHENTICATED,
    INVALID_ARGUMENT and NOT_FOUND (as in tests/serve/test_grpc.py)."""
    import tritonclient.grpc as triton

    port = free_port()
    spec = iris_pipeline(
        "iris-proxy", f"sqlite:///{tmp_path / 'mlflow.db'}", port,
        grpc_port=free_port(), auth={"api_key_env": "IRIS_PROXY_KEY"},
    )  # fmt: skip
    register_quick_model(spec)
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    address = ["--address", queue_head.gcs_address]
    env = {**queue_head.env(), "ORCH_HOME": str(tmp_path / "home"), "IRIS_PROXY_KEY": "pr0xy"}
    env.pop("ORCH_SERVE_INGRESS", None)
    if asked:
        env["ORCH_SERVE_INGRESS"] = asked
    bearer = {"Authorization": "Bearer pr0xy"}

    def orch(*args):
        return subprocess.run(
            [*ORCH, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )

    _shut_serve_down(queue_head)  # Serve takes its ingress and gRPC port when it starts
    served = orch("serve", str(path), "--json", *address)
    try:
        assert served.returncode == 0, served.stderr
        result = json.loads(served.stdout)
        assert result["ingress"] == ingress
        notes = [line for line in served.stderr.splitlines() if "HA_PROXY" in line]
        assert len(notes) == (ingress == "proxy")
        assert all("RAY_SERVE_ENABLE_HA_PROXY=1" in note for note in notes)
        flowers = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
        answer = httpx.post(
            f"{result['endpoint']}/predict", json=flowers, headers=bearer, timeout=30
        )
        assert answer.status_code == 200
        assert [p["class"] for p in answer.json()["predictions"]] == [0, 2]
        bad = httpx.post(
            f"{result['endpoint']}/predict", json={"instances": [[1.0]]}, headers=bearer,
            timeout=30,
        )  # fmt: skip
        assert bad.status_code == 422
        v2 = httpx.get(f"{result['v2']}/models/iris-proxy/ready", headers=bearer, timeout=30)
        assert v2.status_code == 200 and v2.json()["ready"] is True
        assert result["grpc"] == f"127.0.0.1:{spec.serve.grpc_port}"
        assert_grpc_answers_and_refuses(
            triton.InferenceServerClient(result["grpc"]), "iris-proxy", "pr0xy"
        )
        haproxy = _haproxy_listeners(queue_head.pid)
        assert bool(haproxy) == (ingress == "haproxy")
        assert {host for host, _ in haproxy} <= {"127.0.0.1"}  # loopback only, as embedded
    finally:
        down = orch("serve", str(path), "--down", "--json", *address)
        _shut_serve_down(queue_head)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True
    assert_head_left_idle(queue_head)


def _shut_serve_down(head) -> None:
    """Stop Serve itself on ``head`` (controller and proxies: ``orch serve --down`` removes
    only the application), from a driver of its own."""
    stop = (
        "import ray; from ray import serve; "
        f"ray.init(address={head.gcs_address!r}, logging_level='ERROR'); serve.shutdown()"
    )
    done = subprocess.run([sys.executable, "-c", stop], env=head.env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _haproxy_listeners(head_pid: int) -> set[tuple[str, int]]:
    """(host, port) of every TCP listener of an HAProxy process under the head."""
    from tests.cluster.test_security import _command, _descendants, _listening

    haproxy = {pid for pid in _descendants(head_pid) if "haproxy.cfg" in _command(pid)}
    return {(host, port) for _, host, port in _listening(haproxy)}


def test_grpc_bad_input_is_one_line_and_exit_2(queue_head, tmp_path):
    """A gRPC port another process holds, and a gRPC port without a key: one line naming
    the field, exit 2, and no Serve started on the head."""
    import socket

    spec = iris_pipeline(
        "iris-taken", f"sqlite:///{tmp_path / 'mlflow.db'}", free_port(),
        grpc_port=free_port(), auth={"api_key_env": "IRIS_TAKEN_KEY"},
    )  # fmt: skip
    register_quick_model(spec)
    env = {**queue_head.env(), "ORCH_HOME": str(tmp_path / "home"), "IRIS_TAKEN_KEY": "k"}

    def orch(doc: dict, command: str, *extra: str):
        path = tmp_path / "iris.yaml"
        path.write_text(yaml.safe_dump(doc))
        return subprocess.run([*ORCH, command, str(path), *extra], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    _shut_serve_down(queue_head)
    doc = spec.model_dump(mode="json", exclude_none=True)
    with socket.socket() as holder:  # someone else listens on the spec's gRPC port
        holder.bind(("127.0.0.1", spec.serve.grpc_port))
        holder.listen()
        taken = orch(doc, "serve", "--address", queue_head.gcs_address)
    assert taken.returncode == 2, taken.stderr
    errors = [line for line in taken.stderr.splitlines() if line.startswith("error")]
    assert (
        len(errors) == 1
        and f"serve.grpc_port {spec.serve.grpc_port}: the port is taken" in (errors[0])
    )
    keyless = {**doc, "serve": {k: v for k, v in doc["serve"].items() if k != "auth"}}
    refused = orch(keyless, "validate")
    assert refused.returncode == 2 and "grpc_port needs auth.api_key_env" in refused.stderr
    assert "Traceback" not in taken.stderr + refused.stderr
    assert_head_left_idle(queue_head)
