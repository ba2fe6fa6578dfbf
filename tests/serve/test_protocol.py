"""Request checks and v2 tensors, without Ray: each bad request gets a 4xx naming the problem."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from pydantic import ValidationError

from serve.protocol import (
    RequestError,
    check_size,
    infer_response,
    output_tensors,
    parse_infer,
    parse_instances,
    predictions,
)
from serve.spec import ServeSpec

FEATURES = ["a", "b", "c"]


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def test_rows_as_lists_or_objects_by_feature_name():
    rows = parse_instances(body({"instances": [[1, 2.5, 3], {"c": 3, "a": 1, "b": 2}]}), FEATURES)
    assert rows.dtype == np.float32
    assert rows.tolist() == [[1.0, 2.5, 3.0], [1.0, 2.0, 3.0]]


@pytest.mark.parametrize(
    "raw, status, message",
    [
        (b"", 400, "empty body"),
        (b"{not json", 400, "malformed JSON: Expecting property name"),
        (b"\xc3\x28", 400, "not UTF-8 JSON"),
        (body([1, 2, 3]), 422, '"instances": a list of rows'),
        (body({"instances": [[1, 2, 3]], "x": 1}), 422, "unknown field 'x'"),
        (body({"instances": []}), 422, '"instances" is empty'),
        (body({"instances": "1,2,3"}), 422, '"instances" must be a list'),
        (
            body({"instances": [[1, 2, 3], [1, 2]]}),
            422,
            "instances[1] has 2 features; the model takes 3",
        ),
        (
            body({"instances": [[1, "2", 3]]}),
            422,
            'instances[0][1] is "2"; features must be numbers',
        ),
        (body({"instances": [[1, True, 3]]}), 422, "instances[0][1] is true"),
        (body({"instances": [[1, None, 3]]}), 422, "instances[0][1] is null"),
        (b'{"instances": [[1, NaN, 3]]}', 422, "instances[0][1] is nan; features must be finite"),
        (b'{"instances": [[1, 2, Infinity]]}', 422, "instances[0][2] is inf"),
        (body({"instances": [{"a": 1, "b": 2}]}), 422, "instances[0] lacks 'c'"),
        (body({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}), 422, "unknown feature 'd'"),
        (body({"instances": [7]}), 422, "instances[0] must be a list of 3 numbers"),
        (
            b'{"instances": [[1, 2, 1e300]]}',
            422,
            "instances[0][2] is 1e+300; features must be finite float32",
        ),
        (b'{"instances": [[1, 2, 3], [1, 2, -1e39]]}', 422, "instances[1][2] is -1e+39"),
        (body({"instances": [{"a": 1, "b": 1e300, "c": 3}]}), 422, "instances[0][1] is 1e+300"),
        (body({"instances": [[1, 10**400, 3]]}), 422, "instances[0][1] is too large for a float"),
    ],
)
def test_bad_predict_bodies_name_the_problem(raw, status, message):
    with pytest.raises(RequestError, match=re.escape(message)) as caught:
        parse_instances(raw, FEATURES)
    assert caught.value.status == status


def test_oversized_body_is_413_before_reading():
    with pytest.raises(RequestError, match="above the limit of 1024") as caught:
        check_size("5000", None, 1024)
    assert caught.value.status == 413
    check_size("100", None, 1024)


def test_predictions_carry_class_and_probabilities_or_value():
    probs = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    out = predictions(probs, "classification", ["cat", "dog"])
    assert [p["class"] for p in out] == ["dog", "cat"]
    assert out[0]["probabilities"] == pytest.approx([0.1, 0.9])
    assert predictions(np.array([1.5, 2.5]), "regression", []) == [{"value": 1.5}, {"value": 2.5}]


def v2(shape, data, datatype="FP32"):
    return body(
        {"inputs": [{"name": "features", "shape": shape, "datatype": datatype, "data": data}]}
    )


def test_v2_json_tensor_flat_or_nested():
    rows, _ = parse_infer(v2([2, 3], [1, 2, 3, 4, 5, 6]), None, 3)
    assert rows.tolist() == [[1, 2, 3], [4, 5, 6]]
    rows, _ = parse_infer(v2([2, 3], [[1, 2, 3], [4, 5, 6]], "INT64"), None, 3)
    assert rows.dtype == np.float32 and rows[1, 2] == 6


def test_v2_binary_tensor_extension_in_and_out():
    tensor = np.arange(6, dtype=np.float32).reshape(2, 3)
    head = body(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "outputs": [{"name": "class", "parameters": {"binary_data": True}}],
            "id": "r1",
        }
    )
    rows, doc = parse_infer(head + tensor.tobytes(), str(len(head)), 3)
    assert rows.tolist() == tensor.tolist()
    tensors = output_tensors(np.array([[0.2, 0.8], [0.9, 0.1]]), "classification", ["x", "y"])
    content, headers = infer_response(doc, tensors, "m", "4")
    split = int(headers["inference-header-content-length"])
    meta = json.loads(content[:split])
    assert meta["id"] == "r1" and meta["model_version"] == "4"
    (out,) = meta["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [2]
    blob = content[split:]
    (n,) = struct.unpack("<I", blob[:4])
    assert blob[4 : 4 + n] == b"y"


@pytest.mark.parametrize(
    "raw, header, message",
    [
        (v2([2, 4], [1] * 8), None, "has 4 features; the model takes 3"),
        (v2([2, 3], [1] * 5), None, "holds 5 values; shape [2, 3] needs 6"),
        (v2([1, 3], [1, 2, "x"]), None, 'inputs[0].data[2] is "x"'),
        (v2([1, 3], [1, 2, 3], "BYTES"), None, "datatype 'BYTES' is not numeric"),
        (v2([0, 3], []), None, "has no rows"),
        (body({"inputs": []}), None, 'non-empty "inputs" list'),
        (b"{}", "99", "exceeds the body"),
    ],
)
def test_bad_v2_requests(raw, header, message):
    with pytest.raises(RequestError, match=re.escape(message)) as caught:
        parse_infer(raw, header, 3)
    assert caught.value.status in (400, 422)


def test_serve_spec_cross_field_rules():
    with pytest.raises(ValidationError, match="add up to 100"):
        ServeSpec(name="d", traffic={"champion": 90, "challenger": 20})
    with pytest.raises(ValidationError, match="below batching.max_batch_size"):
        ServeSpec(name="d", max_ongoing_requests=8, batching={"max_batch_size": 32})
    with pytest.raises(ValidationError, match="min_replicas .3. is above max_replicas .2."):
        ServeSpec(name="d", autoscaling={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValidationError, match="not a version"):
        ServeSpec(name="d", model="models:/m/3", traffic={"a": 50, "b": 50})
    with pytest.raises(ValidationError, match="quantization"):
        ServeSpec(name="d", quantization="int4")
