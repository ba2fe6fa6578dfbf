"""The shared Open Inference Protocol v2 application (``/v2``): KServe and Triton clients
reach any deployed pipeline by its registered model name.

It maps model names to the pipelines' applications (``serve.app``) and forwards each
request to that pipeline's ingress. Its builder takes plain JSON-able args, so ``serve
deploy`` configs can name it (``import_path: serve.v2:build_v2_app``).
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on methods.

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from serve.http import Unauthorized, _body, _error, check_key
from serve.protocol import (
    BINARY_HEADER,
    RequestError,
    infer_response,
    label_datatype,
    output_tensors,
    parse_infer,
    row_shape,
)
from serve.v2_grpc import (
    check_grpc_key,
    fail,
    metadata_response,
    parse_grpc_infer,
    pb,
)
from serve.v2_grpc import infer_response as grpc_infer_response

V2_APP = "orch-v2"
SERVER = {"name": "orch", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
ROUTER_CPUS = 0.1  # the /v2 router's and a traffic split's ingress replica

v2_api = FastAPI(title="orch Open Inference Protocol v2", docs_url="/docs")


def _metadata_doc(model: str, meta: dict) -> dict:
    """What ``GET /v2/models/<name>`` answers (and gRPC's ModelMetadata).

    Defined above the deployment: ``@serve.ingress`` pickles the class's routes while the
    class statement runs, and a module name defined below it would be missing in the
    replica (NameError at request time)."""
    classification = meta["task"] == "classification"
    outputs = (
        [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(meta["classes"])]},
            {"name": "class", "datatype": label_datatype(meta["classes"]), "shape": [-1]},
        ]
        if classification
        else [{"name": "value", "datatype": "FP32", "shape": [-1]}]
    )
    return {
        "name": model,
        "versions": meta["versions"],
        "platform": "onnxruntime_onnx" if meta["runtime"] == "onnxruntime" else "pytorch",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, *row_shape(meta)]}],
        "outputs": outputs,
    }


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
        return SERVER

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
        return JSONResponse(_metadata_doc(model, meta))

    @v2_api.post("/models/{model}/infer")
    @v2_api.post("/models/{model}/versions/{version}/infer")
    async def infer(self, model: str, request: Request, version: str | None = None) -> Response:
        try:
            meta = await self._served(model, version)
            check_key(request, meta["api_key_sha256"])
            body = await _body(request, 64 * 1_048_576)
            header = request.headers.get(BINARY_HEADER)
            rows, doc = parse_infer(body, header, meta["n_features"], meta.get("input_shape"))
            outputs, served = await self._handle(model).infer.remote(rows)
            tensors = output_tensors(outputs, meta["task"], meta["classes"])
            content, headers = infer_response(doc, tensors, model, served["version"])
        except Unauthorized:
            return _error(401, "missing or wrong bearer key (Authorization: Bearer <key>)")
        except RequestError as exc:
            return _error(exc.status, exc.message)
        return Response(content, headers=headers)

    # ----------------------------------------------------------------- v2 over gRPC
    # Ray Serve calls the method named like the gRPC one, with Triton's request message.

    async def ServerLive(self, request, grpc_context=None):  # noqa: N802 (gRPC's names)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context=None):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, grpc_context=None):  # noqa: N802
        return pb.ServerMetadataResponse(name=SERVER["name"], version=SERVER["version"])

    async def _keyed(self, model: str, version: str, grpc_context) -> dict:
        """The model's metadata once the call carries its key: gRPC's replica ports face
        the network, so even a model's name and shape are the key holder's to see."""
        meta = await self._served(model, version or None)
        check_grpc_key(grpc_context, meta["api_key_sha256"])
        return meta

    async def ModelReady(self, request, grpc_context=None):  # noqa: N802
        try:
            await self._keyed(request.name, request.version, grpc_context)
        except RequestError as exc:
            fail(grpc_context, exc)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, grpc_context=None):  # noqa: N802
        try:
            meta = await self._keyed(request.name, request.version, grpc_context)
        except RequestError as exc:
            fail(grpc_context, exc)
            return pb.ModelMetadataResponse()
        return metadata_response(_metadata_doc(request.name, meta))

    async def ModelInfer(self, request, grpc_context=None):  # noqa: N802
        model = request.model_name
        try:
            meta = await self._keyed(model, request.model_version, grpc_context)
            rows = parse_grpc_infer(request, meta["n_features"], meta.get("input_shape"))
            outputs, served = await self._handle(model).infer.remote(rows)
            tensors = output_tensors(outputs, meta["task"], meta["classes"])
            return grpc_infer_response(request, tensors, served["version"])
        except RequestError as exc:
            fail(grpc_context, exc)
            return pb.ModelInferResponse()


def build_v2_app(args: dict | None = None):
    """The ``/v2`` router application (``import_path: serve.v2:build_v2_app``)."""
    return V2Router.options(user_config={"models": dict((args or {}).get("models", {}))}).bind()
