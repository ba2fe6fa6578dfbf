"""Ray Serve's private names, used in one place: the running Serve's HTTP and gRPC options.

A Serve that is already running keeps its own host and ports whatever a spec says, and Ray
2.60 has no public call that tells them: only the private ``_get_global_client`` (and its
controller's ``get_grpc_config``). This is
the only module that touches Ray Serve's private names; tests/test_private_names.py checks
that, and fails on the Ray upgrade that removes the name instead of our answer silently
falling back to the spec's port.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpOptions:
    """Where a running Serve's HTTP proxy (or HAProxy) listens."""

    host: str
    port: int


def running_http_options() -> HttpOptions | None:
    """The running Serve's HTTP host and port; None when Serve is not running."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    options = client.http_config
    return HttpOptions(host=options.host, port=options.port)


def running_grpc_port() -> int | None:
    """The port of the running Serve's gRPC service; None when Serve is not running or
    started without gRPC (no servicer)."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    options = ray.get(client._controller.get_grpc_config.remote(), timeout=30)
    return options.port if options.grpc_servicer_functions else None
