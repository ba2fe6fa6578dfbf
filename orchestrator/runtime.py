"""Where things live and which Ray to use: the embedded defaults under ``./.orch/``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from orchestrator.exceptions import ClusterError


def orch_home() -> Path:
    """Root of the embedded state: $ORCH_HOME, else ./.orch in the working directory."""
    return Path(os.environ.get("ORCH_HOME") or Path.cwd() / ".orch").resolve()


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set, else a SQLite store under the embedded home."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    home = orch_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root() -> Path:
    return orch_home() / "mlartifacts"


def checkpoint_root() -> Path:
    return orch_home() / "runs"


def study_root() -> Path:
    """Tuning studies: Ray Tune's experiment state and each trial's checkpoints."""
    return orch_home() / "studies"


def init_local_ray(**options) -> None:
    """Start a private local Ray (``ray.init`` options pass through).

    Ray Train frees the workers' placement group of a trial that Tune stops early from a
    helper actor that asks the state API (served by the dashboard) whether the trial's
    controller is alive. That helper finds its cluster by auto-detection, which fails as
    soon as a second Ray runs on the machine; the leaked placement group then starves the
    next trials. So the GCS port is chosen here and every worker is told the address.
    """
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            address="local",
            include_dashboard=True,
            runtime_env={"env_vars": {"RAY_ADDRESS": address}},
            **options,
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def resolve_address(address: str | None) -> str | None:
    """ "auto" means the cluster ``orch cluster up`` recorded under this ORCH_HOME when there
    is one (its temp dir is its own, so Ray's "auto" would not find it). Call it before Ray
    reads its token settings (the CLI does, first thing): it puts them in the environment."""
    if address == "auto" and not os.environ.get("RAY_ADDRESS"):
        return _recorded_cluster() or address
    return address


def _recorded_cluster() -> str | None:
    from cluster.local import HEAD_FILE, LocalHead

    head = LocalHead.load(orch_home() / "cluster" / HEAD_FILE)
    if head is None or not head.alive():
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", head.token_path)
    return head.gcs_address


def connect_ray(address: str | None = None, *, show_worker_logs: bool = True) -> None:
    """Join a Ray cluster, or start a local one.

    ``address=None`` joins the cluster of a ``ray job submit`` (RAY_ADDRESS is set there)
    and otherwise starts a private local Ray; "auto" or "host:port" join a running cluster.
    Reuses Ray if this process is already connected (the SDK in a notebook or a test).
    """
    import ray
    import ray.exceptions

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    address = resolve_address(address)
    try:
        options = {
            "log_to_driver": show_worker_logs,
            "logging_level": "WARNING",
            "configure_logging": True,
        }
        if address == "local":
            init_local_ray(**options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"cannot connect to Ray at {address!r}: {first_line}. Start one with `ray start "
            "--head`, leave out --address to run on a local Ray, and with token auth set "
            "RAY_AUTH_MODE=token (token from ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)"
        ) from None
