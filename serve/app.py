"""The Ray Serve applications: one per pipeline (``/<name>/...``) and the shared OIP v2 router.

A pipeline's application is one FastAPI ingress deployment that validates each request,
then hands its rows to a ``@serve.batch`` queue in front of the model, in the same replica
(no extra hop). With ``traffic`` the ingress instead routes by weight to one ``Predictor``
deployment per alias. The ``/v2`` application maps registered model names to those
applications, so KServe and Triton clients reach any deployed pipeline by model name.

Both builders take plain JSON-able args, so ``serve deploy`` configs can name them
(``import_path: serve.app:build_app``).
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on methods.

import asyncio
import hashlib
import hmac
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from serve.protocol import (
    BINARY_HEADER,
    RequestError,
    check_size,
    infer_response,
    label_datatype,
    output_tensors,
    parse_infer,
    parse_instances,
    predictions,
)
from serve.quantize import load_predictor
from serve.registry import Registry

V2_APP = "orch-v2"
ROUTER_CPUS = 0.1  # the /v2 router's and a traffic split's ingress replica


class ServedModel(BaseModel):
    """One model version as a replica loads it (a ``VariantReport`` file in MLflow)."""

    alias: str | None
    model_name: str
    version: str
    quantization: str
    runtime: str
    tracking_uri: str
    run_id: str
    artifact_path: str
    threads: int = 1


class AppConfig(BaseModel):
    """Everything a pipeline's application needs; the ``args`` of a serve deploy config."""

    name: str
    model_name: str
    task: str
    classes: list
    feature_names: list[str]
    models: list[ServedModel] = Field(min_length=1)
    weights: list[int] | None = Field(None, description="Traffic percent per model (aliases).")
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    max_body_bytes: int = 1_048_576
    api_key_sha256: str | None = None
    deployment: dict = Field(default_factory=dict, description="Serve deployment options.")


class Unauthorized(Exception):
    pass


def check_key(request: Request, key_sha256: str | None) -> None:
    if key_sha256 is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, key = auth.partition(" ")
    given = hashlib.sha256(key.strip().encode()).hexdigest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, key_sha256):
        raise Unauthorized()


def _error(status: int, message: str) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    check_size(request.headers.get("content-length"), None, limit)
    body = await request.body()
    check_size(None, len(body), limit)
    return body


class BatchedModel:
    """The model behind a ``@serve.batch`` queue: concurrent requests share one forward.

    A request that arrives while no other is in the replica runs at once: waiting
    ``batch_wait_timeout_s`` for batch-mates that are not coming would be all of its
    latency at low load (a 10 ms wait was 24 ms p50 of a model that answers in 0.7 ms).
    Requests that overlap wait for each other, up to the timeout or ``max_batch_size``.
    """

    def __init__(self, served: ServedModel, max_batch_size: int, batch_wait_timeout_s: float):
        self.served = served
        self._dir = tempfile.mkdtemp(prefix="orch-model-")
        path = Registry(served.tracking_uri).download(
            served.run_id, served.artifact_path, self._dir
        )
        self._predict = load_predictor(Path(path), served.runtime, served.threads)
        self._run.set_max_batch_size(max_batch_size)
        self._run.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches = 0
        self._in_flight = 0  # requests in this replica's model path now

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _run(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        sizes = np.cumsum([len(r) for r in requests])[:-1]
        rows = np.concatenate(requests) if len(requests) > 1 else requests[0]
        # ONNX Runtime and torch release the GIL: the event loop keeps taking requests.
        outputs = await asyncio.get_running_loop().run_in_executor(None, self._predict, rows)
        self.batches += 1
        return np.split(outputs, sizes)

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        alone = self._in_flight == 0
        self._in_flight += 1
        try:
            if alone:
                return await asyncio.get_running_loop().run_in_executor(None, self._predict, rows)
            return await self._run(rows)
        finally:
            self._in_flight -= 1


@serve.deployment(name="Predictor")
class Predictor:
    """One alias's model when ``traffic`` splits requests between aliases."""

    def __init__(self, served: dict, max_batch_size: int, batch_wait_timeout_s: float):
        self.model = BatchedModel(ServedModel(**served), max_batch_size, batch_wait_timeout_s)

    async def predict(self, rows: np.ndarray) -> tuple[np.ndarray, dict]:
        served = self.model.served
        return await self.model(rows), {"version": served.version, "alias": served.alias}


model_api = FastAPI(
    title="orch model server",
    description="Predictions from a registered model. Send raw feature values; "
    "standardisation happens inside the model.",
)

_PREDICT_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "object", "additionalProperties": {"type": "number"}},
                            ]
                        },
                    }
                },
            },
            "example": {"instances": [[0.0, 1.0, 2.0]]},
        }
    },
    "required": True,
}


@serve.deployment(name="Ingress")
@serve.ingress(model_api)
class Ingress:
    def __init__(self, config: dict, predictors: list | None = None):
        self.config = AppConfig(**config)
        self.started = time.time()
        if predictors:
            self.local = None
            self.routes = list(zip(self.config.weights or [], predictors, strict=True))
        else:
            self.local = BatchedModel(
                self.config.models[0],
                self.config.max_batch_size,
                self.config.batch_wait_timeout_s,
            )
            self.routes = []

    async def infer(self, rows: np.ndarray) -> tuple[np.ndarray, dict]:
        """Rows -> (model outputs, {version, alias}); the v2 router calls this too."""
        if self.local is not None:
            served = self.local.served
            return await self.local(rows), {"version": served.version, "alias": served.alias}
        pick = random.choices(range(len(self.routes)), weights=[w for w, _ in self.routes])[0]
        return await self.routes[pick][1].predict.remote(rows)

    @model_api.post(
        "/predict",
        openapi_extra={"requestBody": _PREDICT_BODY},
        responses={
            200: {"description": "One prediction per instance, in order."},
            400: {"description": "Malformed or empty JSON."},
            401: {"description": "Missing or wrong bearer key (when serve.auth is set)."},
            413: {"description": "Body above serve.max_body_bytes."},
            422: {"description": "Wrong shape, types, or non-finite values."},
            503: {"description": "Overloaded; retry after the Retry-After seconds."},
        },
    )
    async def predict(self, request: Request) -> Response:
        """Predict: ``{"instances": [[...], ...]}`` -> ``{"predictions": [...]}``."""
        config = self.config
        try:
            check_key(request, config.api_key_sha256)
            rows = parse_instances(
                await _body(request, config.max_body_bytes), config.feature_names
            )
        except Unauthorized:
            return _error(401, "missing or wrong bearer key (Authorization: Bearer <key>)")
        except RequestError as exc:
            return _error(exc.status, exc.message)
        outputs, served = await self.infer(rows)
        return JSONResponse(
            {
                "predictions": predictions(outputs, config.task, config.classes),
                "model": {"name": config.model_name, **served},
            }
        )

    @model_api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness and what is served."""
        config = self.config
        return {
            "status": "ok",
            "model": config.model_name,
            "versions": {m.alias or "model": m.version for m in config.models},
            "quantization": config.models[0].quantization,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def metadata(self) -> dict:
        config = self.config
        return {
            "model_name": config.model_name,
            "task": config.task,
            "classes": config.classes,
            "n_features": len(config.feature_names),
            "versions": [m.version for m in config.models],
            "runtime": config.models[0].runtime,
            "api_key_sha256": config.api_key_sha256,
        }


def build_app(args: dict):
    """Serve application builder (``import_path: serve.app:build_app``)."""
    config = AppConfig(**args)
    options = dict(config.deployment)
    if config.weights is None:
        return Ingress.options(**options).bind(config.model_dump())
    predictors = [
        Predictor.options(name=f"Predictor-{m.alias}", **options).bind(
            m.model_dump(), config.max_batch_size, config.batch_wait_timeout_s
        )
        for m in config.models
    ]
    ingress_options = {k: v for k, v in options.items() if k != "ray_actor_options"}
    ingress_options["ray_actor_options"] = {"num_cpus": ROUTER_CPUS}
    return Ingress.options(**ingress_options).bind(config.model_dump(), predictors)


# --------------------------------------------------------------------------- OIP v2

v2_api = FastAPI(title="orch Open Inference Protocol v2", docs_url="/docs")


@serve.deployment(name="V2Router", ray_actor_options={"num_cpus": ROUTER_CPUS})
@serve.ingress(v2_api)
class V2Router:
    """``/v2/...``: model name -> that pipeline's ingress. The map is the ``user_config``
    (``{"models": {"<registered name>": "<app name>"}}``), so adding a pipeline updates it
    without restarting this replica."""

    def __init__(self):
        self.apps: dict[str, str] = {}
        self._meta: dict[str, tuple[float, dict]] = {}

    def reconfigure(self, config: dict) -> None:
        self.apps = dict(config.get("models", {}))
        self._meta = {}

    def models(self) -> dict[str, str]:
        return dict(self.apps)

    def _handle(self, model: str):
        app = self.apps.get(model)
        if app is None:
            raise RequestError(
                404, f"no model {model!r} is served; served: {', '.join(self.apps) or 'none'}"
            )
        return serve.get_deployment_handle("Ingress", app_name=app)

    async def _metadata(self, model: str) -> dict:
        # Cached briefly: a redeployed pipeline may serve another version a moment later.
        cached = self._meta.get(model)
        if cached is None or time.monotonic() - cached[0] > 2.0:
            cached = (time.monotonic(), await self._handle(model).metadata.remote())
            self._meta[model] = cached
        return cached[1]

    async def _served(self, model: str, version: str | None) -> dict:
        """The model's metadata; RequestError 404 for an unknown model or version."""
        meta = await self._metadata(model)
        if version is not None and version not in meta["versions"]:
            raise RequestError(404, f"{model} serves versions {meta['versions']}, not {version}")
        return meta

    @v2_api.get("/")
    async def server_metadata(self) -> dict:
        return {"name": "orch", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @v2_api.get("/health/live")
    async def live(self) -> dict:
        return {"live": True}

    @v2_api.get("/health/ready")
    async def ready(self) -> dict:
        return {"ready": True}

    @v2_api.get("/models/{model}/ready")
    @v2_api.get("/models/{model}/versions/{version}/ready")
    async def model_ready(self, model: str, version: str | None = None) -> Response:
        try:
            await self._served(model, version)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        return JSONResponse({"name": model, "ready": True})

    @v2_api.get("/models/{model}")
    @v2_api.get("/models/{model}/versions/{version}")
    async def model_metadata(self, model: str, version: str | None = None) -> Response:
        try:
            meta = await self._served(model, version)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        classification = meta["task"] == "classification"
        outputs = (
            [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(meta["classes"])]},
                {"name": "class", "datatype": label_datatype(meta["classes"]), "shape": [-1]},
            ]
            if classification
            else [{"name": "value", "datatype": "FP32", "shape": [-1]}]
        )
        return JSONResponse(
            {
                "name": model,
                "versions": meta["versions"],
                "platform": "onnxruntime_onnx" if meta["runtime"] == "onnxruntime" else "pytorch",
                "inputs": [
                    {"name": "features", "datatype": "FP32", "shape": [-1, meta["n_features"]]}
                ],
                "outputs": outputs,
            }
        )

    @v2_api.post("/models/{model}/infer")
    @v2_api.post("/models/{model}/versions/{version}/infer")
    async def infer(self, model: str, request: Request, version: str | None = None) -> Response:
        try:
            meta = await self._served(model, version)
            check_key(request, meta["api_key_sha256"])
            body = await _body(request, 64 * 1_048_576)
            rows, doc = parse_infer(body, request.headers.get(BINARY_HEADER), meta["n_features"])
            outputs, served = await self._handle(model).infer.remote(rows)
            tensors = output_tensors(outputs, meta["task"], meta["classes"])
            content, headers = infer_response(doc, tensors, model, served["version"])
        except Unauthorized:
            return _error(401, "missing or wrong bearer key (Authorization: Bearer <key>)")
        except RequestError as exc:
            return _error(exc.status, exc.message)
        return Response(content, headers=headers)


def build_v2_app(args: dict | None = None):
    """The ``/v2`` router application (``import_path: serve.app:build_v2_app``)."""
    return V2Router.options(user_config={"models": dict((args or {}).get("models", {}))}).bind()
