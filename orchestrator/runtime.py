"""Where things live and which Ray to use: the embedded defaults under ``./.orch/``."""

from __future__ import annotations

import os
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
    try:
        local = {"include_dashboard": True} if address == "local" else {}
        ray.init(
            address=address,
            # The dashboard (on 127.0.0.1) serves the state API that Ray Train uses to free
            # the workers' placement group of a trial Tune stops early.
            **local,
            log_to_driver=show_worker_logs,
            logging_level="WARNING",
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"cannot connect to Ray at {address!r}: {first_line}. Start one with `ray start "
            "--head`, leave out --address to run on a local Ray, and with token auth set "
            "RAY_AUTH_MODE=token (token from ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)"
        ) from None
