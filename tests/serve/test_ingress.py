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


def test_a_cluster_on_rays_python_proxy_serves_the_same_api_and_says_how_to_get_haproxy(
    queue_head, tmp_path
):
    """On a head started with a plain `ray start` (Serve's Python proxy), the same HTTP API
    and v2 over gRPC: Triton's client infers with the key and gets UNAUTHENTICATED,
    INVALID_ARGUMENT and NOT_FOUND as through HAProxy (tests/serve/test_grpc.py). This is
    the first test that starts Serve on the shared head, so Serve takes its gRPC port."""
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
    bearer = {"Authorization": "Bearer pr0xy"}

    def orch(*args):
        return subprocess.run(
            [*ORCH, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )

    served = orch("serve", str(path), "--json", *address)
    try:
        assert served.returncode == 0, served.stderr
        result = json.loads(served.stdout)
        assert result["ingress"] == "proxy"
        notes = [line for line in served.stderr.splitlines() if "HA_PROXY" in line]
        assert len(notes) == 1 and "RAY_SERVE_ENABLE_HA_PROXY=1" in notes[0]
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
    finally:
        down = orch("serve", str(path), "--down", "--json", *address)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True
    assert_head_left_idle(queue_head)
