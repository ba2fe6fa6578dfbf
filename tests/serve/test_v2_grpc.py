"""The v2 gRPC messages without Ray: typed contents and raw bytes in, Triton's raw outputs
out, and the same checks as over HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor

from serve.protocol import RequestError, output_tensors
from serve.v2_grpc import infer_response, parse_grpc_infer

ROWS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)


def request(datatype="FP32", shape=(2, 3), raw: bytes | None = None, **contents):
    message = pb.ModelInferRequest(model_name="m", id="req-1")
    tensor = message.inputs.add(name="features", datatype=datatype, shape=list(shape))
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    if raw is not None:
        message.raw_input_contents.append(raw)
    return message


@pytest.mark.parametrize(
    "message",
    [
        request(raw=ROWS.tobytes()),
        request(fp32_contents=ROWS.reshape(-1).tolist()),
        request("FP64", fp64_contents=ROWS.reshape(-1).tolist()),
        request("INT64", int64_contents=[1, 2, 3, 4, 5, 6]),
        request("INT32", raw=np.arange(1, 7, dtype=np.int32).tobytes()),
    ],
)
def test_rows_come_from_raw_bytes_or_typed_contents(message):
    assert parse_grpc_infer(message, 3).tolist() == ROWS.tolist()


@pytest.mark.parametrize(
    "message, text",
    [
        (request(shape=(2, 4), raw=ROWS.tobytes()), "[2, 4] has 4 features; the model takes 3"),
        (request(shape=(0, 3), raw=b""), "got [0, 3]"),
        (request(raw=ROWS.tobytes()[:-4]), "holds 20 bytes, not a [2, 3] float32"),
        (request(fp32_contents=[1.0, 2.0]), "holds 2 values; shape [2, 3] needs 6"),
        (request("BYTES", raw=b"x"), "inputs[0].datatype 'BYTES' is not numeric"),
        (request("FP32", fp32_contents=[1, 2, float("nan"), 4, 5, 6]), "NaN or infinite"),
        (request("FP16", fp32_contents=ROWS.reshape(-1).tolist()), "holds 0 values"),
    ],
)
def test_bad_tensors_are_invalid_argument_with_the_reason(message, text):
    with pytest.raises(RequestError) as caught:
        parse_grpc_infer(message, 3)
    assert caught.value.status == 422 and text in caught.value.message


def test_outputs_are_raw_bytes_triton_clients_decode():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    tensors = output_tensors(probabilities, "classification", ["cat", "dog"])
    response = infer_response(request(raw=ROWS.tobytes()), tensors, "7")
    assert (response.model_name, response.model_version, response.id) == ("m", "7", "req-1")
    pairs = zip(response.outputs, response.raw_output_contents, strict=True)
    by_name = {o.name: (o, raw) for o, raw in pairs}
    out, raw = by_name["probabilities"]
    assert (out.datatype, list(out.shape)) == ("FP32", [2, 2])
    assert np.frombuffer(raw, np.float32).reshape(2, 2).tolist() == probabilities.tolist()
    out, raw = by_name["class"]
    assert out.datatype == "BYTES"
    assert [b.decode() for b in deserialize_bytes_tensor(raw)] == ["cat", "dog"]
    only = request(raw=ROWS.tobytes())
    only.outputs.add(name="class")
    assert [o.name for o in infer_response(only, tensors, "7").outputs] == ["class"]
    only.outputs.add(name="logits")
    with pytest.raises(RequestError, match="unknown output 'logits'"):
        infer_response(only, tensors, "7")
