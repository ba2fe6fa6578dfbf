"""Driver side of serving: check resources, deploy or update an application, keep the v2
router's model map, write ``serve deploy`` configs.

Re-deploying an application with the same name is how a new version rolls out: Serve
starts replicas with the new args and retires the old ones after their in-flight requests
finish, so clients see no failed request.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import yaml

from serve.app import AppConfig, build_app
from serve.spec import ServeSpec
from serve.v2 import ROUTER_CPUS, V2_APP, build_v2_app
from serve.v2_grpc import grpc_options


class ServeError(Exception):
    """Serving could not start as asked; the message says why and what to change."""


def deployment_options(spec: ServeSpec) -> dict:
    a = spec.autoscaling
    return {
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "initial_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        },
        "ray_actor_options": {"num_cpus": spec.cpus_per_replica},
        "graceful_shutdown_wait_loop_s": 0.5,
        "graceful_shutdown_timeout_s": 30,
        "health_check_period_s": 2,
    }


def _replica_cpus(config: AppConfig) -> float:
    """CPUs the application holds at min_replicas: its replicas, the /v2 router's share and,
    with a traffic split, its routing ingress (Serve would wait forever without them)."""
    per = config.deployment["ray_actor_options"]["num_cpus"]
    replicas = per * config.deployment["autoscaling_config"]["min_replicas"] * len(config.models)
    return replicas + ROUTER_CPUS * (2 if config.weights else 1)


def check_resources(config: AppConfig) -> None:
    """Serve waits forever for replicas that cannot get CPUs: say so before deploying."""
    import ray

    need = _replica_cpus(config)
    total = ray.cluster_resources().get("CPU", 0.0)
    if need > total:
        raise ServeError(
            f"serving {config.name} needs {need:g} CPUs (serve.cpus_per_replica "
            f"{config.deployment['ray_actor_options']['num_cpus']:g} x "
            f"autoscaling.min_replicas {config.deployment['autoscaling_config']['min_replicas']}"
            f" x {len(config.models)} model(s), and {ROUTER_CPUS:g} per router) but the Ray "
            f"cluster has {total:g}; lower "
            "serve.cpus_per_replica or min_replicas, or add nodes"
        )


def http_address(spec: ServeSpec) -> str:
    """Where Serve answers: the running Serve's address, else the spec's.

    A Serve that was already running keeps its own port whatever the spec says.
    """
    from jobs.ray_internals import running_http_options

    options = running_http_options()
    if options is None:  # Serve not running yet
        return f"http://{spec.host}:{spec.port}"
    # bandit B104 accepted: reads Serve's bind address to call it on loopback; binds nothing
    host = "127.0.0.1" if options.host in ("0.0.0.0", "") else options.host  # nosec B104
    return f"http://{host}:{options.port}"


def deploy(config: AppConfig, spec: ServeSpec, controller_env: dict[str, str] | None = None) -> str:
    """Deploy (or update) ``config``'s application and register its model with /v2.

    Args:
        controller_env: environment variables for a Serve controller this call starts (Ray's
            public ``controller_options``; the proxies and replicas it starts inherit them):
            how orch brings HAProxy to a cluster whose processes lack its variables. Ignored
            when Serve already runs.

    Returns the HTTP base URL of the application (``http://host:port/<name>``).
    """
    from ray import serve

    _quiet_serve_logs()
    check_resources(config)
    options = serve_options(spec)
    if controller_env:
        options["controller_options"] = {"runtime_env": {"env_vars": controller_env}}
    serve.start(**options)
    check_grpc(spec)
    serve.run(build_app(config.model_dump()), name=config.name, route_prefix=f"/{config.name}")
    models = _v2_models()
    models[config.model_name] = config.name
    serve.run(build_v2_app({"models": models}), name=V2_APP, route_prefix="/v2")
    return f"{http_address(spec)}/{config.name}"


def serve_options(spec: ServeSpec) -> dict:
    """``serve.start``'s options (and a ``serve deploy`` config's) for ``spec``: HTTP on
    host:port from the head, and the v2 gRPC service when ``grpc_port`` is set."""
    options: dict = {"http_options": {"host": spec.host, "port": spec.port, "location": "HeadOnly"}}
    if spec.grpc_port is not None:
        options["grpc_options"] = grpc_options(spec.grpc_port)
    return options


def check_grpc(spec: ServeSpec) -> None:
    """A Serve already running keeps its gRPC options: say so when they are not the spec's."""
    if spec.grpc_port is None:
        return
    from jobs.ray_internals import running_grpc_port

    running = running_grpc_port()
    if running != spec.grpc_port:
        now = f"on port {running}" if running else "without gRPC"
        raise ServeError(
            f"serve.grpc_port is {spec.grpc_port} but Serve on this cluster already runs "
            f"{now}; Serve takes its gRPC options only when it starts: stop every "
            "application on it (orch serve --down), or set serve.grpc_port to match"
        )


def grpc_address(spec: ServeSpec) -> str | None:
    """host:port of the v2 gRPC service (HAProxy's, or Ray's proxy's), when it is on."""
    if spec.grpc_port is None:
        return None
    host = http_address(spec).split("//", 1)[1].rsplit(":", 1)[0]
    return f"{host}:{spec.grpc_port}"


def cluster_ingress() -> str:
    """``haproxy`` or ``proxy``: what Serve starts with on the connected cluster by itself.

    Serve reads it from its processes' environment, which every Ray worker on a node
    shares, so a zero-CPU task reads it there (the driver's own may differ).
    """
    import ray

    @ray.remote(num_cpus=0)
    def read() -> str | None:
        import os

        return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")

    return "haproxy" if ray.get(read.remote(), timeout=60) == "1" else "proxy"


def ingress_in_use() -> str:
    """``haproxy`` or ``proxy``: how the running Serve takes HTTP. HAProxy either came with
    the cluster's environment or with the controller orch started (``controller_env``):
    then Ray's state API lists its HAProxy managers."""
    if cluster_ingress() == "haproxy":
        return "haproxy"
    import ray
    from ray.util.state import list_actors

    managers = list_actors(
        # this driver's cluster: without it Ray looks one up and refuses when the machine
        # has several
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "HAProxyManager"), ("state", "=", "ALIVE")],
        timeout=30,
    )
    return "haproxy" if managers else "proxy"


def _quiet_serve_logs() -> None:
    # Serve's driver-side INFO lines ("Started Serve", "Connecting to existing Serve app")
    # would interleave with the CLI's own report.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _ask_app(app: str, method: str, timeout_s: float = 30):
    """Call ``method`` of application ``app``'s ingress from the driver and wait.

    Awaited in an event loop of its own thread: under RAY_SERVE_THROUGHPUT_OPTIMIZED (the
    HAProxy set-up) a handle's router runs in the caller's event loop, which a plain
    driver does not have, and a job driver inherits that setting from the cluster.
    """
    from ray import serve

    async def ask():
        return await getattr(serve.get_app_handle(app), method).remote()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(ask(), timeout_s)).result()


def _v2_models() -> dict[str, str]:
    """The router's current model map, minus applications that are gone."""
    from ray import serve

    try:
        current = _ask_app(V2_APP, "models")
    except Exception:  # no router yet
        return {}
    live = set(serve.status().applications)
    return {model: app for model, app in current.items() if app in live}


def undeploy(name: str) -> bool:
    """Delete application ``name`` and drop its models from /v2 (the router goes with the
    last one). False when no such application was running; other applications stay."""
    from ray import serve

    _quiet_serve_logs()
    apps = set(serve.status().applications)
    if name not in apps:
        return False
    current = _v2_models()
    serve.delete(name)
    models = {model: app for model, app in current.items() if app != name}
    # A model name the deleted app had taken over from another app goes back to that one.
    orphaned = set(current) - set(models)
    for app in sorted(apps - {name, V2_APP}):
        if not orphaned:
            break
        try:
            model = _ask_app(app, "metadata")["model_name"]
        except Exception:  # not one of ours, or not answering: leave it out of /v2
            continue
        if model in orphaned:
            models[model] = app
            orphaned.discard(model)
    if models:
        serve.run(build_v2_app({"models": models}), name=V2_APP, route_prefix="/v2")
    elif V2_APP in apps:
        serve.delete(V2_APP)
    return True


def emit_config(config: AppConfig, spec: ServeSpec, path: str) -> dict:
    """A ``serve deploy`` config with this application and the /v2 router.

    ``serve deploy`` makes the cluster hold exactly the config's applications. The code is
    imported from the installed ``orch-platform`` package (install it on every node);
    no ``working_dir`` is shipped.
    """
    options = serve_options(spec)
    document = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": spec.host, "port": spec.port},
        **({"grpc_options": options["grpc_options"]} if "grpc_options" in options else {}),
        "applications": [
            {
                "name": config.name,
                "route_prefix": f"/{config.name}",
                "import_path": "serve.app:build_app",
                "args": config.model_dump(mode="json"),
            },
            {
                "name": V2_APP,
                "route_prefix": "/v2",
                "import_path": "serve.v2:build_v2_app",
                "args": {"models": {config.model_name: config.name}},
            },
        ],
    }
    with open(path, "w") as f:
        yaml.safe_dump(document, f, sort_keys=False)
    return document
