"""The Open Inference Protocol v2 over gRPC (KServe's and Triton's ``GRPCInferenceService``),
served by the shared v2 router next to its HTTP routes.

Ray Serve routes a gRPC call to an application by the call's ``application`` metadata,
so clients send ``application: orch-v2`` (``tritonclient.grpc``: ``headers=``) and name the
model as on ``/v2`` over HTTP. The message classes are ``tritonclient``'s generated ones,
the same that Triton clients use, so no protobuf code is compiled here.

Checks and messages match the HTTP API's (``serve.protocol``): a bad request gets
INVALID_ARGUMENT (HTTP's 400/422), an unknown model NOT_FOUND, a missing or wrong key
UNAUTHENTICATED, each with the same text; a model served without a key PERMISSION_DENIED.
"""

from __future__ import annotations

import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serve.http import key_matches
from serve.protocol import DTYPES, RequestError, check_shape, tensor_bytes

# tritonclient's generated messages name their module after their .proto file
# (``ModelInferRequest.__module__ == "grpc_service_pb2"``), a module nothing installs. Ray's
# Python proxy pickles each request for the replica, and pickle finds a class again by its
# module's name: without this alias every infer through that proxy failed with "import of
# module 'grpc_service_pb2' failed". The proxy imports this module (SERVICER below names
# it) and so does every replica of the v2 router, so the name resolves in both.
sys.modules.setdefault(pb.ModelInferRequest.__module__, pb)

SERVICER = "serve.v2_grpc.add_inference_servicer"
APPLICATION_HEADER = "application"

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
}
# typed contents fields of InferTensorContents, by v2 datatype (FP16 comes only as raw bytes)
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
}


def add_inference_servicer(servicer, server) -> None:
    """Serve's ``grpc_servicer_functions`` entry: Triton's ``GRPCInferenceService``, added
    from here so that importing it registers the message module alias above."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


def grpc_options(port: int) -> dict:
    """Serve's ``grpc_options``: the v2 service on ``port``. No reflection: the service is
    Triton's, whose clients carry its definitions."""
    return {"port": port, "grpc_servicer_functions": [SERVICER], "enable_reflection": False}


def fail(context, exc: RequestError):
    """Answer ``exc`` as a gRPC status; the caller returns an empty message."""
    context.set_code(_STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT))
    context.set_details(exc.message)


def check_grpc_key(context, key_sha256: str | None) -> None:
    """The model's bearer key from the call's ``authorization`` metadata (as over HTTP).

    A model served without a key does not infer over gRPC at all: Ray opens every
    replica's gRPC port on all interfaces, so without a key anyone who reaches the machine
    could use it (its HTTP API listens on loopback only)."""
    if key_sha256 is None:
        raise RequestError(
            403,
            "this model is served without a key (serve.auth), so it does not answer over "
            "gRPC, whose replica ports Ray opens on every interface; set serve.auth",
        )
    given = dict(context.invocation_metadata()).get("authorization", "")
    if not key_matches(given, key_sha256):
        raise RequestError(401, "missing or wrong bearer key (authorization: Bearer <key>)")


def parse_grpc_infer(
    request: pb.ModelInferRequest, n_features: int, input_shape: list[int] | None = None
) -> np.ndarray:
    """The request's single input tensor as float32 rows (raw bytes, as tritonclient sends
    by default, or typed contents); a tensor input's rows may come as [rows, *input_shape]."""
    if len(request.inputs) != 1:
        raise RequestError(422, f"the model takes one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    datatype = tensor.datatype.upper()
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise RequestError(
            422,
            f"inputs[0].datatype {tensor.datatype!r} is not numeric; use one of "
            + ", ".join(DTYPES),
        )
    shape = list(tensor.shape)
    check_shape(shape, n_features, input_shape)
    if shape[0] < 1:
        raise RequestError(422, f"inputs[0].shape must have rows >= 1, got {shape}")
    count = shape[0] * n_features
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise RequestError(
                422, f"inputs[0] holds {len(raw)} bytes, not a {shape} {dtype.__name__}"
            )
        values = np.frombuffer(raw, dtype=dtype)
    else:
        field = _CONTENTS.get(datatype)
        values = np.asarray(getattr(tensor.contents, field) if field else [], dtype=dtype)
        if len(values) != count:
            raise RequestError(
                422, f"inputs[0] holds {len(values)} values; shape {shape} needs {count}"
            )
    rows = values.astype(np.float32).reshape(shape[0], n_features)
    if not np.isfinite(rows).all():
        raise RequestError(422, "inputs[0] holds NaN or infinite values")
    return rows


def infer_response(
    request: pb.ModelInferRequest,
    tensors: dict[str, tuple[str, np.ndarray]],
    version: str,
) -> pb.ModelInferResponse:
    """The asked outputs (all when none is named) as raw bytes, like Triton answers."""
    asked = [output.name for output in request.outputs] or list(tensors)
    unknown = [name for name in asked if name not in tensors]
    if unknown:
        raise RequestError(
            422, f"unknown output {unknown[0]!r}; the model has: {', '.join(tensors)}"
        )
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=version, id=request.id
    )
    for name in asked:
        datatype, array = tensors[name]
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(tensor_bytes(datatype, array))
    return response


def metadata_response(doc: dict) -> pb.ModelMetadataResponse:
    """``ModelMetadataResponse`` from the document ``GET /v2/models/<name>`` answers."""
    return pb.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]],
    )
