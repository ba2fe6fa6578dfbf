"""Request parsing and response building for both HTTP APIs, without Ray or FastAPI.

Every check happens here, per request, before a request joins a batch: one bad request
gets its own 4xx and cannot fail the good requests it would have been batched with.

- ``/<app>/predict``: ``{"instances": [[...], ...]}`` (rows of numbers, or objects keyed by
  feature name) -> ``{"predictions": [...]}``.
- Open Inference Protocol v2 (KServe, Triton): JSON tensors and the binary tensor data
  extension that ``tritonclient`` uses by default.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

BINARY_HEADER = "inference-header-content-length"


class RequestError(Exception):
    """A client mistake: HTTP ``status`` and a message that names the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_size(content_length: str | None, body_len: int | None, limit: int) -> None:
    size = body_len if body_len is not None else int(content_length or 0)
    if size > limit:
        raise RequestError(
            413, f"request body is {size} bytes, above the limit of {limit} (serve.max_body_bytes)"
        )


def _load_json(body: bytes):
    if not body.strip():
        raise RequestError(400, 'empty body; send JSON like {"instances": [[...]]}')
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(422, f"{where} is {json.dumps(value)[:40]}; features must be numbers")
    if not math.isfinite(value):
        raise RequestError(422, f"{where} is {value}; features must be finite numbers")
    return value


def parse_instances(body: bytes, feature_names: list[str]) -> np.ndarray:
    """The rows of a /predict body as a float32 matrix; RequestError names what is wrong."""
    doc = _load_json(body)
    if not isinstance(doc, dict) or "instances" not in doc:
        raise RequestError(
            422, 'body must be a JSON object with "instances": a list of rows of features'
        )
    unknown = sorted(set(doc) - {"instances"})
    if unknown:
        raise RequestError(422, f'unknown field {unknown[0]!r}; the body holds only "instances"')
    rows = doc["instances"]
    if not isinstance(rows, list):
        raise RequestError(422, '"instances" must be a list of rows')
    if not rows:
        raise RequestError(422, '"instances" is empty; send at least one row')
    n = len(feature_names)
    matrix = np.empty((len(rows), n), dtype=np.float32)
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            missing = [f for f in feature_names if f not in row]
            extra = [k for k in row if k not in set(feature_names)]
            if missing or extra:
                what = f"lacks {missing[0]!r}" if missing else f"has unknown feature {extra[0]!r}"
                raise RequestError(
                    422, f"instances[{i}] {what}; rows by name need all {n} features"
                )
            row = [row[f] for f in feature_names]
        elif not isinstance(row, list):
            raise RequestError(
                422, f"instances[{i}] must be a list of {n} numbers (or an object by feature name)"
            )
        if len(row) != n:
            raise RequestError(422, f"instances[{i}] has {len(row)} features; the model takes {n}")
        if not all(type(v) in _NUMBERS for v in row):  # bool is not a number here
            for j, v in enumerate(row):
                _number(v, f"instances[{i}][{j}]")  # raises, naming the first bad value
        try:
            matrix[i] = row
        except OverflowError:  # an integer beyond any float
            j = next(j for j, v in enumerate(row) if abs(v) > 1e308)
            raise RequestError(422, f"instances[{i}][{j}] is too large for a float") from None
    if not np.isfinite(matrix).all():  # NaN/Infinity (Python's json accepts them), or > fp32
        i, j = (int(k) for k in np.argwhere(~np.isfinite(matrix))[0])
        value = rows[i][feature_names[j]] if isinstance(rows[i], dict) else rows[i][j]
        raise RequestError(
            422, f"instances[{i}][{j}] is {value}; features must be finite float32 numbers"
        )
    return matrix


_NUMBERS = (int, float)


def predictions(outputs: np.ndarray, task: str, classes: list) -> list[dict]:
    if task == "classification":
        best = np.argmax(outputs, axis=1)
        return [
            {"class": classes[int(k)], "probabilities": [round(float(p), 6) for p in row]}
            for k, row in zip(best, outputs, strict=True)
        ]
    return [{"value": float(v)} for v in outputs.reshape(-1)]


# --------------------------------------------------------------------------- OIP v2

DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
}


def row_shape(meta: dict) -> list[int]:
    """One row's shape as V2 clients send it: a tensor input's, else [features]."""
    return list(meta.get("input_shape") or [meta["n_features"]])


def check_shape(shape, n_features: int, input_shape: list[int] | None) -> None:
    """A V2 input's shape is [rows, n_features], or [rows, *input_shape] for a tensor input.

    Raises:
        RequestError: 422 naming the shape sent and the ones taken.
    """
    taken = [[n_features]] + ([list(input_shape)] if input_shape else [])
    expected = " or ".join(f"[rows, {', '.join(map(str, t))}]" for t in taken)
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise RequestError(422, f"inputs[0].shape must be {expected}, got {shape}")
    if shape[1:] not in taken:
        if len(shape) == 2:
            message = f"inputs[0].shape {shape} has {shape[1]} features"
            raise RequestError(422, f"{message}; the model takes {n_features}")
        raise RequestError(422, f"inputs[0].shape {shape}: the model takes {expected}")


def parse_infer(
    body: bytes, header_length: str | None, n_features: int, input_shape: list[int] | None = None
) -> tuple[np.ndarray, dict]:
    """A v2 infer request's single input tensor as float32 rows, and the request document.

    Accepts JSON ``data`` (flat or nested) and binary tensor data
    (``Inference-Header-Content-Length`` + ``parameters.binary_data_size``); a tensor
    input's rows may come as [rows, *input_shape] (e.g. [rows, C, H, W]).
    """
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r}") from None
        if not 0 < split <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {split} exceeds the body")
        doc, binary = _load_json(body[:split]), body[split:]
    else:
        doc, binary = _load_json(body), b""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise RequestError(422, 'body must be a JSON object with a non-empty "inputs" list')
    if len(doc["inputs"]) != 1:
        raise RequestError(422, f"the model takes one input tensor, got {len(doc['inputs'])}")
    tensor = doc["inputs"][0]
    if not isinstance(tensor, dict):
        raise RequestError(422, "inputs[0] must be an object with name, shape, datatype, data")
    dtype = DTYPES.get(str(tensor.get("datatype", "")).upper())
    if dtype is None:
        raise RequestError(
            422,
            f"inputs[0].datatype {tensor.get('datatype')!r} is not numeric; use one of "
            + ", ".join(DTYPES),
        )
    shape = tensor.get("shape")
    check_shape(shape, n_features, input_shape)
    if shape[0] == 0:
        raise RequestError(422, "inputs[0] has no rows; send at least one")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    count = shape[0] * n_features
    if size is not None:
        if size != count * np.dtype(dtype).itemsize or size > len(binary):
            raise RequestError(
                422, f"inputs[0] binary_data_size {size} does not hold a {shape} {dtype.__name__}"
            )
        values = np.frombuffer(binary[:size], dtype=dtype)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(422, "inputs[0].data must be a list of numbers")
        flat = _flatten(data)
        if len(flat) != count:
            raise RequestError(
                422, f"inputs[0].data holds {len(flat)} values; shape {shape} needs {count}"
            )
        values = np.array([_number(v, f"inputs[0].data[{i}]") for i, v in enumerate(flat)])
    rows = values.astype(np.float32).reshape(shape[0], n_features)
    if not np.isfinite(rows).all():
        raise RequestError(422, "inputs[0] holds NaN or infinite values")
    return rows, doc


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def output_tensors(
    outputs: np.ndarray, task: str, classes: list
) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (datatype, array) of the model's v2 outputs."""
    if task != "classification":
        return {"value": ("FP32", outputs.reshape(-1).astype(np.float32))}
    labels = [classes[int(k)] for k in np.argmax(outputs, axis=1)]
    datatype = label_datatype(classes)
    array = (
        np.array([str(c) for c in labels], dtype=object)
        if datatype == "BYTES"
        else np.array(labels, dtype=np.int64 if datatype == "INT64" else np.float64)
    )
    return {"probabilities": ("FP32", outputs.astype(np.float32)), "class": (datatype, array)}


def label_datatype(classes: list) -> str:
    """v2 datatype of the class labels: INT64, FP64, or BYTES for strings."""
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if all(isinstance(c, int | float) for c in classes):
        return "FP64"
    return "BYTES"


def infer_response(
    doc: dict, tensors: dict[str, tuple[str, np.ndarray]], model: str, version: str
) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and headers: JSON, or JSON + binary where the request asked."""
    asked = doc.get("outputs")
    binary_default = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    if asked is None:
        wanted = [(name, binary_default) for name in tensors]
    else:
        if not isinstance(asked, list):
            raise RequestError(422, '"outputs" must be a list of {"name": ...}')
        wanted = []
        for item in asked:
            name = item.get("name") if isinstance(item, dict) else None
            if name not in tensors:
                raise RequestError(
                    422, f"unknown output {name!r}; the model has: {', '.join(tensors)}"
                )
            params = item.get("parameters") or {}
            wanted.append((name, bool(params.get("binary_data", binary_default))))
    out, blobs = [], []
    for name, binary in wanted:
        datatype, array = tensors[name]
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = tensor_bytes(datatype, array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        out.append(entry)
    header = {"model_name": model, "model_version": version, "outputs": out}
    if "id" in doc:
        header["id"] = doc["id"]
    head = json.dumps(header).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def tensor_bytes(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            raw = str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()
