"""A real Ray head on this machine: ``ray start --head`` with its own ports, temp dir and token.

Several Ray clusters can live on one machine (a test suite's, a user's), so every port is
chosen here, the temp dir is our own, and the head is stopped through the process group it
was started in: nothing we did not start is touched (no ``ray stop``).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.ingress import plan_ingress, remove_state

# The GCS, raylet and dashboard are gone within a second of SIGTERM; Ray's autoscaler
# monitor (and `ray start --block`, which waits on it) then spends ten seconds or more
# retrying to tell the dead GCS that it was terminated. Nothing is left to save by then.
STOP_GRACE_S = 3.0

HEAD_FILE = "head.json"


# Ports and worker-port ranges this process handed out: the kernel may give a port it just
# freed to the next bind(0), and two nodes of one cluster given the same port (or the same
# range) would have one of them fail to start.
_HANDED_OUT: set[int] = set()
_RANGES: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _worker_port_range() -> int:
    """The low end of 100 worker ports, apart from every range this process handed out
    (below Linux's ephemeral range, where free_port's ports come from)."""
    while True:
        low = random.randrange(20000, 29000, 100)  # nosec B311: a port, not a secret
        if low not in _RANGES:
            _RANGES.add(low)
            return low


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


@dataclass
class LocalHead:
    """A running head node: where it answers and how to stop it."""

    pid: int
    dashboard_url: str
    gcs_address: str
    token_path: str
    temp_dir: str
    log_path: str
    ingress: str = "proxy"  # how Serve takes HTTP here: haproxy | proxy (cluster.ingress)
    ingress_env: dict[str, str] = field(default_factory=dict)  # given to every node's ray start

    @property
    def token(self) -> str:
        return Path(self.token_path).read_text().strip()

    def env(self) -> dict[str, str]:
        """Environment of a process that talks to this head (token auth on)."""
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "RAY_USAGE_STATS_ENABLED": "0",
            # as in an activated venv: a job's `python` is ours
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN", None)
        return env

    def node_env(self) -> dict[str, str]:
        """Environment of a ``ray start`` of this cluster: a client's plus its ingress."""
        return {**self.env(), **self.ingress_env}

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _answers(self.dashboard_url, self.token)

    def stop(self, timeout_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the head's own process group, SIGKILL if it does not go."""
        _stop_group(self.pid, signal.SIGTERM, timeout_s)
        remove_state(self.ingress_env)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LocalHead | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _group_alive(pgid: int) -> bool:
    """Does a live (not zombie) process remain in process group ``pgid``?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _tree(pgid: int) -> set[int]:
    """Every process of group ``pgid`` and, recursively, their children."""
    parent_of, group = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent_of[pid] = int(fields[1])
        if int(fields[2]) == pgid:
            group.add(pid)
    found, grew = set(group), True
    while grew:
        children = {pid for pid, ppid in parent_of.items() if ppid in found} - found
        grew = bool(children)
        found |= children
    return found - {os.getpid()}


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _answers(dashboard_url: str, token: str) -> bool:
    request = urllib.request.Request(
        f"{dashboard_url}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        urllib.request.urlopen(request, timeout=2)  # nosec B310: our http:// dashboard URL
        return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _node_flags(temp_dir: Path, num_cpus, resources, labels) -> list[str]:
    """Flags every node on this machine needs: its own ports, worker port range, temp dir."""
    low = _worker_port_range()
    flags = ["--node-ip-address", "127.0.0.1"]
    for flag in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ):
        flags += [flag, str(free_port())]
    flags += ["--min-worker-port", str(low), "--max-worker-port", str(low + 99)]
    flags += ["--temp-dir", str(temp_dir / "ray"), "--disable-usage-stats"]
    if num_cpus is not None:  # ray start takes whole CPUs only
        flags += ["--num-cpus", str(int(num_cpus))]
    if resources:
        flags += ["--resources", json.dumps(resources)]
    if labels:
        flags += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
    return flags


def _write_secret(path: Path, secret: str) -> None:
    """Create ``path`` holding ``secret``, readable by this user only from its first byte
    (created 0600, never chmod-ed after the write), and whole or not at all (a rename)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    staging.replace(path)


def start_head(
    state_dir: str | Path | None = None,
    *,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    timeout_s: float = 120,
    ingress: str | None = None,
) -> LocalHead:
    """Start ``ray start --head --block`` bound to 127.0.0.1, with token auth on.

    Args:
        state_dir: where the token, the log and head.json go (default: a new temp dir).
        num_cpus: CPUs the head offers (default: the machine's).
        resources: custom resources, e.g. {"trainer_slot": 2}.
        labels: node labels, e.g. {"orch.node": "head"}.
        ingress: haproxy | proxy (default: $ORCH_SERVE_INGRESS, else haproxy).

    Raises:
        RuntimeError: the head did not answer within ``timeout_s`` (its log tail is in it).
        IngressError: ``ingress`` is not one orch knows, or HAProxy is missing.
    """
    # Unix sockets under the temp dir must stay short: keep it under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp"))  # nosec B108: a new 0700 folder
    state = Path(state_dir) if state_dir else temp_dir
    state.mkdir(parents=True, exist_ok=True)
    token_path = state / "token"
    if not token_path.exists():
        _write_secret(token_path, secrets.token_hex(16))
    log_path = state / "head.log"
    plan = plan_ingress(ingress)
    dashboard, gcs = free_port(), free_port()
    cmd = [_ray_bin(), "start", "--head", "--block"]
    cmd += ["--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
    cmd += ["--ray-client-server-port", str(free_port())]
    cmd += _node_flags(temp_dir, num_cpus, resources, labels)
    head = LocalHead(
        pid=0,
        dashboard_url=f"http://127.0.0.1:{dashboard}",
        gcs_address=f"127.0.0.1:{gcs}",
        token_path=str(token_path),
        temp_dir=str(temp_dir),
        log_path=str(log_path),
        ingress=plan.mode,
        ingress_env=plan.environment(),
    )
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            cmd, env=head.node_env(), start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    head.pid = process.pid
    deadline = time.time() + timeout_s
    while not _answers(head.dashboard_url, head.token):
        if time.time() > deadline or process.poll() is not None:
            head.stop()
            raise RuntimeError(f"ray start --head did not come up: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    head.save(state / HEAD_FILE)
    return head


def ensure_head(state_dir: str | Path, **options) -> LocalHead:
    """The head recorded under ``state_dir`` if it still answers, else a new one."""
    state = Path(state_dir)
    head = LocalHead.load(state / HEAD_FILE)
    if head is not None and head.alive():
        return head
    return start_head(state, **options)


def stop_recorded(state_dir: str | Path) -> LocalHead | None:
    """Stop the head recorded under ``state_dir`` (by its PID); None if none was recorded."""
    path = Path(state_dir) / HEAD_FILE
    head = LocalHead.load(path)
    if head is None:
        return None
    head.stop()
    path.unlink(missing_ok=True)
    return head


# ----------------------------------------------------------------- worker nodes

WORKERS_FILE = "workers.json"


@dataclass
class LocalWorker:
    """A worker raylet of our own: ``ray start --address <head> --block`` in its own group."""

    name: str
    pid: int
    num_cpus: float
    labels: dict[str, str]
    temp_dir: str
    log_path: str
    resources: dict[str, float] | None = None

    def alive(self) -> bool:
        _reap(self.pid)
        return _group_alive(self.pid)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_GRACE_S) -> None:
        """Stop the node: its process group and every process started below it (Ray's worker
        processes, which leave the group; with SIGKILL this is a node crash)."""
        _stop_group(self.pid, sig, timeout_s)


def _stop_group(pgid: int, sig: int, timeout_s: float) -> None:
    """Signal the process group we started, then whatever it started that left the group
    (Ray's worker processes get their own): listed before the raylet dies and they are
    re-parented, so only processes of ours are touched."""
    below = _tree(pgid)
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    for pid in below:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        _reap(pgid)
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pgid)


def start_worker(
    head: LocalHead,
    state_dir: str | Path,
    name: str,
    *,
    num_cpus: float = 1,
    resources: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
) -> LocalWorker:
    """Add a worker node to ``head``'s cluster (returns once its process runs; the node
    registers with the GCS a few seconds later)."""
    temp_dir = Path(tempfile.mkdtemp(prefix=f"orch-{name}-", dir="/tmp"))  # nosec B108: 0700
    state = Path(state_dir)
    log_path = state / f"{name}.log"
    labels = {"orch.node": name, **(labels or {})}
    cmd = [_ray_bin(), "start", "--address", head.gcs_address, "--block"]
    cmd += _node_flags(temp_dir, num_cpus, resources, labels)
    with open(log_path, "a") as log:  # a restart adds to the first start's log
        process = subprocess.Popen(
            cmd, env=head.node_env(), start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    return LocalWorker(name, process.pid, num_cpus, labels, str(temp_dir), str(log_path), resources)


def restart_worker(head: LocalHead, state_dir: str | Path, worker: LocalWorker) -> LocalWorker:
    """Start ``worker`` again, on fresh ports (a node whose process exited before it joined:
    on a busy machine another process can take a port between its pick and its bind)."""
    worker.stop()
    return start_worker(
        head,
        state_dir,
        worker.name,
        num_cpus=worker.num_cpus,
        resources=worker.resources,
        labels=worker.labels,
    )


def load_workers(state_dir: str | Path) -> list[LocalWorker]:
    try:
        return [LocalWorker(**w) for w in json.loads((Path(state_dir) / WORKERS_FILE).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def save_workers(state_dir: str | Path, workers: list[LocalWorker]) -> None:
    (Path(state_dir) / WORKERS_FILE).write_text(json.dumps([asdict(w) for w in workers], indent=2))


def cluster_up(
    state_dir: str | Path,
    nodes: int,
    cpus_per_node: float,
    labels: dict[str, str] | None = None,
    resources: dict[str, float] | None = None,
    ingress: str | None = None,
) -> tuple[LocalHead, list[LocalWorker]]:
    """A head and ``nodes - 1`` worker raylets on this machine, each its own Ray node.

    Raises:
        RuntimeError: a cluster is already recorded under ``state_dir`` and running.
    """
    state = Path(state_dir)
    existing = LocalHead.load(state / HEAD_FILE)
    if existing is not None and existing.alive():
        raise RuntimeError(
            f"a cluster is already up under {state} (head pid {existing.pid}, "
            f"{existing.dashboard_url}); `orch cluster down` first"
        )
    head = start_head(
        state,
        num_cpus=cpus_per_node,
        resources=resources,
        labels={"orch.node": "head", **(labels or {})},
        ingress=ingress,
    )
    workers = [
        start_worker(
            head, state, f"worker-{i}", num_cpus=cpus_per_node, resources=resources, labels=labels
        )
        for i in range(1, nodes)
    ]
    save_workers(state, workers)
    return head, workers


def cluster_down(state_dir: str | Path) -> tuple[LocalHead | None, list[LocalWorker]]:
    """Stop the workers, then the head, recorded under ``state_dir``: by PID, nothing else."""
    workers = load_workers(state_dir)
    for worker in workers:
        worker.stop()
    (Path(state_dir) / WORKERS_FILE).unlink(missing_ok=True)
    return stop_recorded(state_dir), workers
