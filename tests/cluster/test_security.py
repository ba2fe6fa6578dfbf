"""Secure defaults, checked on the running services: loopback binds, token auth, MLflow auth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import stop_process_group, wait_for, wait_serve_stopped

pytestmark = pytest.mark.slow


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, bound address, port) of every TCP listener the given processes hold."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owner:  # 0A = LISTEN
                continue
            host_hex, port_hex = local.split(":")
            if width == 8:
                host = ".".join(str(int(host_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                host = "::" if int(host_hex, 16) == 0 else host_hex
            found.append((owner[inode], host, int(port_hex, 16)))
    return found


def _group(pgid: int) -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.add(int(stat.parent.name))
    return pids


# Ray 2.60's own gRPC servers (GCS, raylet, object manager, agents) listen on every
# interface whatever --node-ip-address says (measured here); they refuse calls without the
# token. Everything with an HTTP face that we start binds 127.0.0.1.
# The queue server is a Ray driver: its core worker's gRPC port is one of those.
RAY_INTERNAL = ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "monitor.py",
                "ray.util.client.server", "dashboard.py", "orchestrator server")  # fmt: skip


def test_our_http_services_listen_on_loopback_and_ask_for_the_token(queue_client, queue_head):
    import json
    from urllib.parse import urlparse

    url = queue_client.server_url()  # starts the queue server on the head
    server_pid = json.loads((queue_client.state_dir / "server.json").read_text())["pid"]
    listeners = _listening(_group(queue_head.pid) | {server_pid})
    ours = {urlparse(queue_head.dashboard_url).port, urlparse(url).port}
    bound = {(host, port) for _, host, port in listeners if port in ours}
    assert bound == {("127.0.0.1", port) for port in ours}
    for pid, host, port in listeners:
        if host != "127.0.0.1" and port not in ours:
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            assert any(name in command for name in RAY_INTERNAL), command
    # token auth is on: the dashboard and the queue server refuse a request without it
    assert httpx.get(f"{queue_head.dashboard_url}/api/jobs/", timeout=10).status_code in (401, 403)
    assert httpx.get(f"{url}/jobs", timeout=10).status_code == 401
    # and Serve, the MLflow UI (`orch ui`) and the queue server default to 127.0.0.1
    from orchestrator.cli import _parser
    from serve.spec import ServeSpec

    assert ServeSpec(name="x").host == "127.0.0.1"
    assert _parser().parse_args(["ui"]).host == "127.0.0.1"
    assert _parser().parse_args(["server"]).host == "127.0.0.1"


def test_mlflow_server_with_basic_auth_refuses_anonymous_calls(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-admin-pw",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    (tmp_path / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        "admin_username = admin\nadmin_password = s3cret-admin-pw\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "basic_auth.ini")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        env=env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
    try:
        from tests.helpers import wait_for

        def answers():
            try:
                return httpx.post(url, json={"max_results": 1}, timeout=2)
            except httpx.HTTPError:
                return None

        anonymous = wait_for(answers, 60, "the MLflow server")
        assert anonymous.status_code == 401
        admin = httpx.post(
            url, json={"max_results": 1}, auth=("admin", "s3cret-admin-pw"), timeout=10
        )
        assert admin.status_code == 200
        # the tracking client authenticates from the environment, as our jobs would
        import mlflow

        os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = "s3cret-admin-pw"
        try:
            client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
            assert client.create_experiment("secured")
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        stop_process_group(server)


def test_a_driver_with_a_wrong_token_is_refused_in_one_line(queue_head, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(
        "name: refused\ndata: {source: sklearn://iris}\nmodel: {type: mlp}\n"
        "train: {epochs: 1, batch_size: 16}\n"
    )
    (tmp_path / "wrong-token").write_text("0" * 32)
    env = {**queue_head.env(), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "wrong-token")}
    refused = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--address",
         queue_head.gcs_address],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: cannot connect to Ray")


def _descendants(root: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, set()).add(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _answers_http(host: str, port: int) -> int | None:
    """The HTTP status a plain GET gets, None when what listens there does not speak HTTP/1
    (Ray's gRPC servers, which ask for the cluster token anyway)."""
    try:
        return httpx.get(f"http://{host}:{port}/", timeout=3).status_code
    except httpx.HTTPError:
        return None


def test_serve_under_haproxy_answers_the_network_only_with_its_api(ray_session, tmp_path):
    """HAProxy (the embedded Ray's default ingress), its stats and Prometheus listeners,
    the replicas' own ports and the fallback proxy listen on 127.0.0.1 only; HAProxy's admin
    socket sits in a folder only its user can enter."""
    import socket

    from ray import serve

    from orchestrator import Client
    from tests.serve.conftest import iris_pipeline, register_quick_model

    port = free_port()
    spec = iris_pipeline("iris-secure", f"sqlite:///{tmp_path / 'mlflow.db'}", port)
    register_quick_model(spec, epochs=5)
    try:
        served = Client().serve(spec)
        flower = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
        assert httpx.post(f"{served.endpoint}/predict", json=flower, timeout=30).status_code == 200
        ray_processes = _descendants(os.getpid())
        haproxy = {pid for pid in ray_processes if "haproxy.cfg" in _command(pid)}
        assert haproxy, "the embedded Ray serves through HAProxy by default"
        config = next(
            arg for pid in haproxy for arg in _command(pid).split() if arg.endswith("haproxy.cfg")
        )
        state_dir = Path(config).parent.parent  # <state>/<node id>/haproxy.cfg
        assert state_dir.stat().st_mode & 0o077 == 0  # the admin socket's folder is private
        assert list(state_dir.glob("*/admin.sock"))
        serving = haproxy | {
            pid for pid in ray_processes
            if any(name in _command(pid) for name in ("ServeReplica", "ProxyActor"))
        }  # fmt: skip
        listeners = _listening(serving)
        haproxy_ports = {p for pid, _, p in listeners if pid in haproxy}
        assert port in haproxy_ports and len(haproxy_ports) >= 3  # the API, stats, Prometheus
        assert {host for pid, host, _ in listeners if pid in haproxy} == {"127.0.0.1"}
        # requests are counted by HAProxy's own Prometheus exporter; Ray's per-request log
        # line (a Python actor parsing each request) is off by default (cluster/ingress.py)
        text = Path(config).read_text()
        assert "log-format-sd" not in text
        exporter = re.search(r"frontend prometheus\s+bind \S*:(\d+)", text)
        assert exporter, text

        def counted() -> bool:
            """A request, then HAProxy's count of it (a reload after the deploy can restart
            HAProxy between the two, its counters from 0: then ask again)."""
            httpx.post(f"{served.endpoint}/predict", json=flower, timeout=30)
            metrics = httpx.get(f"http://127.0.0.1:{exporter.group(1)}/metrics", timeout=10)
            answered = [
                float(line.rsplit(" ", 1)[1])
                for line in metrics.text.splitlines()
                if line.startswith("haproxy_backend_http_responses_total{")
                and "iris-secure" in line
                and 'code="2xx"' in line
            ]
            return bool(answered) and max(answered) >= 1

        wait_for(counted, 30, "HAProxy's exporter to count the app's answered requests")
        # what else listens off loopback in those processes is Ray's own gRPC (token-guarded)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.1", 9))  # no packet is sent: finds the outward address
                outward = probe.getsockname()[0]
            except OSError:  # no route off this machine: nothing off loopback to ask from
                outward = "127.0.0.1"
        for pid, host, listen_port in listeners if not outward.startswith("127.") else ():
            if host != "127.0.0.1":
                assert _answers_http(outward, listen_port) is None, _command(pid)
            else:
                with pytest.raises(httpx.ConnectError):
                    httpx.get(f"http://{outward}:{listen_port}/", timeout=3)
    finally:
        serve.shutdown()


def test_grpc_serving_faces_the_network_only_behind_the_key(ray_session, tmp_path, monkeypatch):
    """With serve.grpc_port (opt-in): HAProxy's gRPC frontend binds 127.0.0.1; the replicas'
    own gRPC ports, which Ray 2.60 opens on every interface, infer nothing without the key
    when called from a non-loopback address."""
    import socket

    import numpy as np
    import tritonclient.grpc as triton
    from ray import serve
    from tritonclient.utils import InferenceServerException

    from orchestrator import Client
    from tests.serve.conftest import iris_pipeline, register_quick_model

    monkeypatch.setenv("IRIS_SECURE_KEY", "k")
    port, grpc_port = free_port(), free_port()
    spec = iris_pipeline(
        "iris-grpc-secure",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        port,
        grpc_port=grpc_port,
        auth={"api_key_env": "IRIS_SECURE_KEY"},
    )
    register_quick_model(spec, epochs=5)
    wait_serve_stopped()  # Serve takes gRPC options only when it starts
    try:
        Client().serve(spec)
        ray_processes = _descendants(os.getpid())
        haproxy = {pid for pid in ray_processes if "haproxy.cfg" in _command(pid)}
        replicas = {pid for pid in ray_processes if "ServeReplica" in _command(pid)}
        listeners = _listening(haproxy | replicas)
        assert (grpc_port, "127.0.0.1") in {(p, h) for pid, h, p in listeners if pid in haproxy}
        facing = [(h, p) for pid, h, p in listeners if pid in replicas and h != "127.0.0.1"]
        assert facing, "Ray 2.60 opens the replicas' gRPC ports on every interface"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.1", 9))
                outward = probe.getsockname()[0]
            except OSError:
                pytest.skip("no address off loopback to call from")
        rows = triton.InferInput("features", [1, 4], "FP32")
        rows.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        statuses = set()
        for _, listen_port in facing:
            client = triton.InferenceServerClient(f"{outward}:{listen_port}")
            with pytest.raises(InferenceServerException) as refused:  # never an answer
                client.infer(
                    "iris-grpc-secure", [rows], headers={"application": "orch-v2"},
                    client_timeout=10,
                )  # fmt: skip
            statuses.add(f"{refused.value.status()}: {refused.value.message()}")
        # the router's own port was reached, and asked for the key
        assert any("missing or wrong bearer key" in s for s in statuses), statuses
    finally:
        serve.shutdown()
