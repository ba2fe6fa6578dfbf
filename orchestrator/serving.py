"""The serve stage: registry URI -> measured, gated variant -> Ray Serve application.

It reads only what earlier stages wrote to MLflow (the registered version, its run's spec
and data info), so ``orch serve pipeline.yaml`` works on its own after any ``orch run``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jobs.data import PreparedData, load_sample
from jobs.errors import DataError
from jobs.events import Event
from jobs.model_loading import load_inference_model
from orchestrator.address import RayAddress
from orchestrator.events import ClusterFound, Served, StageStarted, VariantMeasured
from orchestrator.exceptions import ClusterError, JobFailedError, SpecError
from orchestrator.runtime import connect_ray, default_tracking_uri
from orchestrator.serve_result import ServeResult
from orchestrator.spec import PipelineSpec
from serve.app import AppConfig, ServedModel
from serve.deploy import ServeError, deployment_options, emit_config
from serve.quantize import QuantizationError
from serve.records import VariantReport
from serve.registry import Registry, RegistryError
from serve.variant import GateError, check_gate, prepare_variant

EventHandler = Callable[[Event], None]


def _served_versions(spec: PipelineSpec, registry: Registry) -> list[tuple[str | None, str]]:
    """[(alias or None, models:/ URI)] to serve: one, or one per traffic alias."""
    serve = spec.serve
    uri = serve.model_uri(spec.registered_model_name, spec.register.alias)
    if serve.traffic is None:
        return [(None, uri)]
    name = uri.removeprefix("models:/").split("@")[0]
    return [(alias, f"models:/{name}@{alias}") for alias in serve.traffic]


def _data(spec: PipelineSpec) -> PreparedData:
    try:
        return load_sample(spec.data)
    except DataError as exc:
        raise SpecError(f"{exc.field}: {exc.message}") from None


@dataclass(frozen=True)
class _GateData:
    """What the quantization gate measures a variant on: the pipeline's own validation
    split in raw feature units (as requests send it), and calibration rows if needed."""

    x_val: np.ndarray
    y_val: np.ndarray
    task: str
    fingerprint: str
    calibration: np.ndarray | None


def _gate_data(spec: PipelineSpec) -> _GateData:
    data = _data(spec)
    info = data.info
    x_val = info.raw_features(data.x_val)
    y_val = (
        data.y_val
        if info.task == "classification"
        else data.y_val * info.target_std + (info.target_mean)
    )
    calibration = None
    if spec.serve.quantization == "static-int8":
        rows = data.x_train[: spec.serve.calibration_samples]
        calibration = info.raw_features(rows)
    return _GateData(x_val, y_val, info.task, info.fingerprint, calibration)


def _api_key_hash(serve) -> str | None:
    if not serve.auth.api_key_env:
        return None
    key = os.environ.get(serve.auth.api_key_env)
    if not key:
        raise SpecError(
            f"serve.auth.api_key_env: environment variable {serve.auth.api_key_env} is "
            "not set; export it with the key clients will send"
        )
    return hashlib.sha256(key.encode()).hexdigest()


def _gated_variant(
    spec: PipelineSpec,
    registry: Registry,
    uri: str,
    gate: _GateData,
    on_event: EventHandler,
):
    """The served variant of one registered version, measured and passed through the
    gate: (name, version, its VariantReport, the model's DataInfo)."""
    serve = spec.serve
    try:
        name, version = registry.resolve(uri)
    except RegistryError as exc:
        raise SpecError(f"serve.model: {exc}") from None
    trained_on = registry.version_tags(name, version).get("orch.data_fingerprint")
    if trained_on and trained_on != gate.fingerprint:
        raise SpecError(
            f"serve.model: {name} version {version} was trained on other data than this "
            "pipeline's data section (fingerprints differ); the quantization gate measures "
            "on this pipeline's validation split, so serve it from its own pipeline"
        )
    on_event(StageStarted("quantize", model=f"{name}/{version}"))
    try:
        model, model_info = load_inference_model(f"models:/{name}/{version}", registry.tracking_uri)
        report = prepare_variant(
            registry,
            name,
            version,
            serve.quantization,
            model=model,
            x_val=gate.x_val,
            y_val=gate.y_val,
            task=gate.task,
            calibration=gate.calibration,
            max_batch_size=serve.batching.max_batch_size,
            threads=max(1, int(serve.cpus_per_replica)),
        )
        check_gate(report, serve.max_accuracy_drop)
    except (ValueError, QuantizationError) as exc:
        raise JobFailedError(f"serve: {name} version {version}: {exc}") from None
    except GateError as exc:
        raise JobFailedError(str(exc)) from None
    on_event(VariantMeasured(report))
    return name, version, report, model_info


def build_app_config(
    spec: PipelineSpec, tracking_uri: str, on_event: EventHandler
) -> tuple[AppConfig, list[VariantReport]]:
    """Resolve the model(s), build and gate the quantized variant(s): no Ray needed."""
    serve = spec.serve
    key_hash = _api_key_hash(serve)  # a missing key stops here, before any quantizing
    registry = Registry(tracking_uri)
    gate = _gate_data(spec)
    served, reports = [], []
    for alias, uri in _served_versions(spec, registry):
        name, version, report, model_info = _gated_variant(spec, registry, uri, gate, on_event)
        reports.append(report)
        served.append(
            ServedModel(
                alias=alias,
                model_name=name,
                version=version,
                quantization=report.served_quantization,
                runtime=report.runtime,
                tracking_uri=tracking_uri,
                run_id=report.run_id,
                artifact_path=report.artifact_path,
                threads=max(1, int(serve.cpus_per_replica)),
            )
        )
    config = AppConfig(
        name=serve.name,
        model_name=served[0].model_name,
        task=model_info.task,
        classes=model_info.classes,
        feature_names=model_info.feature_names,
        input_shape=model_info.input_shape,
        models=served,
        weights=list(serve.traffic.values()) if serve.traffic else None,
        max_batch_size=serve.batching.max_batch_size,
        batch_wait_timeout_s=serve.batching.batch_wait_timeout_s,
        max_body_bytes=serve.max_body_bytes,
        api_key_sha256=key_hash,
        deployment=deployment_options(serve),
    )
    return config, reports


def run_serving(
    spec: PipelineSpec,
    *,
    address: RayAddress | None = None,
    on_event: EventHandler | None = None,
    emit_config_path: str | None = None,
    show_worker_logs: bool = False,
) -> ServeResult:
    """Deploy the pipeline's serve section (or only write its ``serve deploy`` config).

    Raises:
        SpecError: no serve section, nothing registered under the URI, wrong data.
        JobFailedError: quantization failed or lost more than max_accuracy_drop.
        ClusterError: Serve cannot place the replicas.
    """
    if spec.serve is None:
        raise SpecError(
            f"{spec.name} has no serve section; add one (serve: {{name: ..., quantization: "
            "dynamic-int8}}) to serve its registered model"
        )
    emit = on_event or (lambda event: None)
    emit(StageStarted("serve"))
    tracking_uri = spec.tracking.tracking_uri or default_tracking_uri()
    config, reports = build_app_config(spec, tracking_uri, emit)
    versions = {m.alias or "model": m.version for m in config.models}
    if emit_config_path is not None:
        emit_config(config, spec.serve, emit_config_path)
        return ServeResult(
            app=config.name,
            endpoint=None,
            v2=None,
            model_name=config.model_name,
            versions=versions,
            variants=reports,
            config_path=emit_config_path,
        )
    connection = connect_ray(address, show_worker_logs=show_worker_logs)
    emit(ClusterFound(connection.dashboard_url, connection.token_path))
    from serve.deploy import deploy, grpc_address, ingress_in_use

    controller_env = None
    if _starts_serve_here():
        _check_ports_free(spec.serve)
        controller_env = _haproxy_for_new_serve()
    try:
        endpoint = deploy(config, spec.serve, controller_env=controller_env)
    except ServeError as exc:
        raise ClusterError(str(exc)) from None
    result = ServeResult(
        app=config.name,
        endpoint=endpoint,
        v2=endpoint.rsplit("/", 1)[0] + "/v2",
        grpc=grpc_address(spec.serve),
        model_name=config.model_name,
        versions=versions,
        variants=reports,
        ingress=ingress_in_use(),
    )
    emit(Served(result))
    return result


def stop_serving(spec: PipelineSpec, *, address: RayAddress | None = None) -> bool:
    """Take the spec's Serve application down (its replicas free their CPUs); other
    applications keep serving. False when it was not running.

    Raises:
        SpecError: the spec has no serve section.
    """
    if spec.serve is None:
        raise SpecError(f"{spec.name} has no serve section: there is no application to stop")
    connect_ray(address)
    from serve.deploy import undeploy

    return undeploy(spec.serve.name)


def _haproxy_for_new_serve() -> dict[str, str] | None:
    """HAProxy's environment for the Serve controller this driver, on the head node, is
    about to start (``_starts_serve_here``), on a cluster whose own processes would start
    Ray's Python proxy (a head from a plain
    ``ray start``): Ray's public ``serve.start(controller_options=...)`` hands it to the
    controller, and the proxies it starts inherit it, so no restart is needed. None (keep
    what the cluster does) when the cluster already brings HAProxy, the user asked for the
    proxy (``ORCH_SERVE_INGRESS=proxy``) or HAProxy is not installed.
    """
    from cluster.ingress import haproxy_binary, plan_ingress, requested_mode
    from serve.deploy import cluster_ingress

    if requested_mode() == "proxy" or haproxy_binary() is None:
        return None
    if cluster_ingress() == "haproxy":
        return None
    return plan_ingress("haproxy").environment()


def _starts_serve_here() -> bool:
    """Whether this deploy starts Serve, from a driver on the head node: then its ports and
    HAProxy's folder are this machine's to check and pick. A running Serve keeps its own
    ports and ingress; another machine's are not ours to probe."""
    from jobs.ray_internals import running_http_options

    return running_http_options() is None and _on_head_node()


def _check_ports_free(serve_spec) -> None:
    """Before Serve starts on this machine (the head): its HTTP and gRPC ports must be free,
    or its proxy fails to bind them long after the call returned.

    Raises:
        SpecError: naming the field and the port taken.
    """
    import socket

    for field, port in (("serve.port", serve_spec.port), ("serve.grpc_port", serve_spec.grpc_port)):
        if port is None:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((serve_spec.host, port))
            except OSError as exc:
                raise SpecError(
                    f"{field} {port}: the port is taken on {serve_spec.host} ({exc.strerror}); "
                    f"set {field} to a free port, or stop what listens there"
                ) from None


def _on_head_node() -> bool:
    """Whether this driver runs on the cluster's head node (where Serve's proxy runs)."""
    import ray

    here = ray.util.get_node_ip_address()
    heads = [
        node for node in ray.nodes()
        if node["Alive"] and "node:__internal_head__" in node["Resources"]
    ]  # fmt: skip
    return bool(heads) and heads[0]["NodeManagerAddress"] == here
