"""A pipeline's Ray Serve application (``/<name>/...``); the shared OIP v2 router is
``serve.v2``.

A pipeline's application is one FastAPI ingress deployment that validates each request,
then hands its rows to a ``@serve.batch`` queue in front of the model, in the same replica
(no extra hop). With ``traffic`` the ingress instead routes by weight to one ``Predictor``
deployment per alias.

The builder takes plain JSON-able args, so ``serve deploy`` configs can name it
(``import_path: serve.app:build_app``). ``serve.app:build_v2_app``, which configs emitted
by earlier releases name, still resolves (to ``serve.v2``).
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on methods.

import asyncio
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from serve.http import Unauthorized, _body, _error, check_key
from serve.protocol import (
    RequestError,
    parse_instances,
    predictions,
)
from serve.quantize import load_predictor
from serve.registry import Registry

# build_v2_app: `serve deploy` configs emitted before serve.v2 existed name it here
from serve.v2 import ROUTER_CPUS, build_v2_app  # noqa: F401


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
    input_shape: list[int] | None = Field(
        None, description="A tensor input's row shape: V2 takes [rows, *input_shape] too."
    )
    models: list[ServedModel] = Field(min_length=1)
    weights: list[int] | None = Field(None, description="Traffic percent per model (aliases).")
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    max_body_bytes: int = 1_048_576
    api_key_sha256: str | None = None
    deployment: dict = Field(default_factory=dict, description="Serve deployment options.")


class ModelLoad(BaseModel):
    """What one replica's model did since it started: ``/healthz`` reports it, so a user (or
    the benchmark) can see the batch sizes reached and the share of time in the model."""

    requests: int = 0
    calls: int = 0
    rows: int = 0
    model_seconds: float = 0.0


class BatchedModel:
    """The model behind a ``@serve.batch`` queue: concurrent requests share one forward.

    A request that arrives while no other is in the replica runs at once: waiting
    ``batch_wait_timeout_s`` for batch-mates that are not coming would be all of its
    latency at low load (a 10 ms wait was 24 ms p50 of a model that answers in 0.7 ms).
    Requests that overlap wait for each other, up to the timeout or ``max_batch_size``.
    With ``max_batch_size`` 1 there is no queue at all.

    Model calls run one at a time (the replica's CPUs are the model's threads). A model
    whose one-row call answers within ``INLINE_BUDGET_S`` runs in the event loop itself, as
    each request reaches it: no request then waits in the model path, so none waits for
    batch-mates either. Handing such a call to a thread, or to Serve's batch queue, cost
    more than the call: the int8 MLP (0.03-0.2 ms a call) answered 1,610 req/s at c=32
    in the loop against 931 through the thread and the queue. Slower models run in a
    thread of their own, so the loop keeps taking requests and batches form.
    """

    INLINE_BUDGET_S = 0.00025

    def __init__(
        self,
        served: ServedModel,
        n_features: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ):
        self.served = served
        self._dir = tempfile.mkdtemp(prefix="orch-model-")
        path = Registry(served.tracking_uri).download(
            served.run_id, served.artifact_path, self._dir
        )
        self._predict = load_predictor(Path(path), served.runtime, served.threads)
        one_row = np.zeros((1, n_features), dtype=np.float32)
        self.inline = _call_seconds(self._predict, one_row) <= self.INLINE_BUDGET_S
        self._thread = None if self.inline else ThreadPoolExecutor(1, "orch-model")
        self._batched = max_batch_size > 1
        self._run.set_max_batch_size(max_batch_size)
        self._run.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.load = ModelLoad()
        self._in_flight = 0  # requests in this replica's model path now

    async def _call(self, rows: np.ndarray) -> np.ndarray:
        if self._thread is None:
            return self._timed(rows)
        # ONNX Runtime and torch release the GIL while they compute
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._timed, rows)

    def _timed(self, rows: np.ndarray) -> np.ndarray:
        """The model call, counted where it runs (never the time spent waiting for it);
        only one thread ever runs it, so the counters need no lock."""
        started = time.perf_counter()
        outputs = self._predict(rows)
        load = self.load
        load.calls += 1
        load.rows += len(rows)
        load.model_seconds += time.perf_counter() - started
        return outputs

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _run(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        sizes = np.cumsum([len(r) for r in requests])[:-1]
        rows = np.concatenate(requests) if len(requests) > 1 else requests[0]
        return np.split(await self._call(rows), sizes)

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.load.requests += 1
        alone = self._in_flight == 0
        self._in_flight += 1
        try:
            if alone or not self._batched:
                return await self._call(rows)
            return await self._run(rows)
        finally:
            self._in_flight -= 1


def _call_seconds(predict, batch: np.ndarray, budget_s: float = 0.5) -> float:
    """The quickest of up to 20 calls of ``predict`` on ``batch`` (within ``budget_s``),
    after two warm-up calls, which also make the first request's answer as quick as the
    rest. The quickest, not the median: a replica starts while Serve and HAProxy are busy
    on the same cores, and a median then read a 0.02 ms model as slow."""
    predict(batch)
    predict(batch)
    quickest = float("inf")
    deadline = time.perf_counter() + budget_s
    for _ in range(20):
        started = time.perf_counter()
        predict(batch)
        quickest = min(quickest, time.perf_counter() - started)
        if started > deadline:
            break
    return quickest


@serve.deployment(name="Predictor")
class Predictor:
    """One alias's model when ``traffic`` splits requests between aliases."""

    def __init__(
        self, served: dict, n_features: int, max_batch_size: int, batch_wait_timeout_s: float
    ):
        self.model = BatchedModel(
            ServedModel(**served), n_features, max_batch_size, batch_wait_timeout_s
        )

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


class PredictFastPath:
    """``POST /<app>/predict`` straight to the replica's ``Ingress.predict``, past FastAPI's
    routing, dependency solving and exception layers: on a small model those were about a
    tenth of the replica's CPU per request. The same method answers, so status codes and
    bodies are FastAPI's; the route stays in FastAPI for the OpenAPI docs. A traffic split's
    ingress, which calls other deployments, keeps FastAPI's path (and Serve's 503 for an
    overloaded one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _route(scope) == "/predict":
            ingress = serve.get_replica_context().servable_object
            if ingress.local is not None:
                response = await ingress.predict(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route(scope: dict) -> str:
    """The request's path inside the application (Serve mounts it at its route prefix)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


model_api.add_middleware(PredictFastPath)


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
                len(self.config.feature_names),
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
            # this replica's model since it started (one alias's, without a traffic split)
            "load": self.local.load.model_dump() if self.local is not None else None,
        }

    def metadata(self) -> dict:
        config = self.config
        return {
            "model_name": config.model_name,
            "task": config.task,
            "classes": config.classes,
            "n_features": len(config.feature_names),
            "input_shape": config.input_shape,
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
            m.model_dump(),
            len(config.feature_names),
            config.max_batch_size,
            config.batch_wait_timeout_s,
        )
        for m in config.models
    ]
    ingress_options = {k: v for k, v in options.items() if k != "ray_actor_options"}
    ingress_options["ray_actor_options"] = {"num_cpus": ROUTER_CPUS}
    return Ingress.options(**ingress_options).bind(config.model_dump(), predictors)
