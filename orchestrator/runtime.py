"""Where things live and which Ray to use: the embedded defaults under ``./.orch/``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.address import RayAddress
from orchestrator.exceptions import ClusterError, UsageError, first_line
from orchestrator.home import orch_home


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


_LOCAL_INGRESS: list[dict[str, str]] = []  # the ingress settings of Rays started here


def remove_local_ingress_state() -> None:
    """Remove the HAProxy folders of the local Rays this process started (once they are
    shut down): ``orch run`` ends with ``os._exit``, which runs no exit handler."""
    from cluster.ingress import remove_state

    while _LOCAL_INGRESS:
        remove_state(_LOCAL_INGRESS.pop())


def init_local_ray(**options):
    """Start a private local Ray (``ray.init`` options pass through).

    Serve on it takes requests through HAProxy unless $ORCH_SERVE_INGRESS says ``proxy``
    (``cluster.ingress``); UsageError names a bad value.

    Ray Train frees the workers' placement group of a trial that Tune stops early from a
    helper actor that asks the state API (served by the dashboard) whether the trial's
    controller is alive. That helper finds its cluster by auto-detection, which fails as
    soon as a second Ray runs on the machine; the leaked placement group then starves the
    next trials. So the GCS port is chosen here and every worker is told the address.
    """
    import atexit

    import ray

    from cluster.ingress import IngressError, plan_ingress, remove_state

    try:
        ingress = plan_ingress()
    except IngressError as exc:
        raise UsageError(str(exc)) from None
    # after Ray's own exit handler, or from terminal.leave, which skips exit handlers
    atexit.register(remove_state, ingress.environment())
    _LOCAL_INGRESS.append(ingress.environment())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    # The Ray processes inherit this environment while ray.init starts them: Serve reads
    # its ingress there. The driver gets its own back (Serve's throughput settings would
    # make its handles need an event loop).
    started_with = {"RAY_GCS_SERVER_PORT": str(port), **ingress.environment()}
    saved = {name: os.environ.get(name) for name in started_with}
    os.environ.update(started_with)
    try:
        return ray.init(
            address="local",
            include_dashboard=True,
            runtime_env={"env_vars": {"RAY_ADDRESS": address}},
            **options,
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RayConnection(BaseModel):
    """The Ray this process joined or started, and where a person looks at it."""

    address: str = Field(description="What ray.init was given: 'local', 'auto' or host:port.")
    dashboard_url: str | None = Field(description="The Ray dashboard, None when it is off.")
    token_path: str | None = Field(
        description="The file holding the token the dashboard asks for (token auth on), "
        "None when auth is off or the token only lives in $RAY_AUTH_TOKEN."
    )


def token_file() -> str | None:
    """Where Ray reads its token from, when token auth is on and the token is in a file."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")


def connect_ray(address: RayAddress | None = None, *, show_worker_logs: bool = True):
    """Join a Ray cluster, or start a local one; returns the ``RayConnection``.

    ``address=None`` (no --address, no RAY_ADDRESS) starts a private local Ray; otherwise
    every form ``orchestrator.address`` takes joins that cluster as a driver. Reuses Ray if
    this process is already connected (the SDK in a notebook or a test).

    Raises:
        ClusterError: no cluster answers at the address.
    """
    import ray
    import ray.exceptions

    from orchestrator.address import gcs_address

    if ray.is_initialized():
        return _connection(ray, "connected")
    target = "local" if address is None else gcs_address(address)
    if target != "local" and os.environ.get("RAY_ADDRESS"):
        # Ray reads RAY_ADDRESS itself (ray.init, the state API Train uses): it must name
        # the same cluster in a form Ray takes, never the dashboard URL a user exported.
        os.environ["RAY_ADDRESS"] = target
    options = {
        "log_to_driver": show_worker_logs,
        "logging_level": "WARNING",
        "configure_logging": True,
    }
    try:
        if target == "local":
            context = init_local_ray(**options)
        else:
            context = ray.init(address=target, **options)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        given = "a local Ray" if address is None else address.describe()
        raise ClusterError(
            f"cannot connect to Ray at {given} ({target}): {first_line(exc)}. Start one with `ray "
            "start --head`, leave out --address to run on a local Ray, and with token auth set "
            "RAY_AUTH_MODE=token (token from ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)"
        ) from None
    return RayConnection(
        address=target,
        dashboard_url=_url(context.dashboard_url),
        token_path=token_file(),
    )


def _url(dashboard: str | None) -> str | None:
    if not dashboard:
        return None
    return dashboard if "://" in dashboard else f"http://{dashboard}"


def _connection(ray, address: str) -> RayConnection:
    try:
        context = ray.get_runtime_context()
        gcs = context.gcs_address
    except Exception:
        gcs = address
    return RayConnection(address=gcs, dashboard_url=None, token_path=token_file())
