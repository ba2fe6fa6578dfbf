"""The v2 gRPC story every ingress must tell alike (HAProxy and Ray's Python proxy): a keyed
infer that matches the classes, and UNAUTHENTICATED, INVALID_ARGUMENT and NOT_FOUND for a
missing key, a wrong shape and an unknown model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris

FLOWERS = load_iris().data[[0, 1, 50, 100]].astype(np.float32)
V2_APP = {"application": "orch-v2"}


def features(rows: np.ndarray):
    import tritonclient.grpc as triton

    tensor = triton.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # raw bytes, as Triton's client sends them
    return tensor


def assert_grpc_answers_and_refuses(client, model: str, key: str) -> None:
    """``client`` (a ``tritonclient.grpc.InferenceServerClient``) infers ``model`` (an iris
    MLP) with ``key`` and is refused, with the documented status, without it."""
    from tritonclient.utils import InferenceServerException

    def refused(*, name=model, rows=FLOWERS, headers=V2_APP):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(name, [features(rows)], headers=headers)
        return caught.value.status(), caught.value.message()

    keyed = V2_APP | {"authorization": f"Bearer {key}"}
    answer = client.infer(model, [features(FLOWERS)], headers=keyed)
    assert answer.as_numpy("class").tolist() == [0, 0, 1, 2]
    status, message = refused()
    assert status == "StatusCode.UNAUTHENTICATED" and "missing or wrong bearer key" in message
    status, _ = refused(headers=V2_APP | {"authorization": "Bearer nope"})
    assert status == "StatusCode.UNAUTHENTICATED"
    status, message = refused(rows=FLOWERS[:, :3], headers=keyed)
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape [4, 3] has 3 features; the model takes 4" in message
    status, message = refused(name="nope", headers=keyed)
    assert status == "StatusCode.NOT_FOUND" and "no model 'nope' is served" in message
    # still serving after the refusals
    assert client.infer(model, [features(FLOWERS[:1])], headers=keyed).as_numpy("class")[0] == 0
