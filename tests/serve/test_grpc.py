"""The Open Inference Protocol v2 over gRPC (serve.grpc_port), through the embedded Ray's
HAProxy, with Triton's own client: inference, metadata, the bearer key, the errors. The
same story through Ray's Python proxy, on a head started with a plain `ray start`, is in
test_ingress.py.

Serve takes its gRPC options when it starts, so this module starts its own Serve (with
gRPC) and shuts it down at the end, like test_serving's.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from orchestrator import Client
from orchestrator.exceptions import ClusterError
from tests.conftest import free_port
from tests.helpers import wait_for, wait_serve_stopped
from tests.serve.conftest import iris_pipeline, register_quick_model
from tests.serve.grpc_checks import FLOWERS, V2_APP, assert_grpc_answers_and_refuses
from tests.serve.grpc_checks import features as _features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    store = f"sqlite:///{tmp_path_factory.mktemp('grpc-store') / 'mlflow.db'}"
    port, grpc_port = free_port(), free_port()
    mp = pytest.MonkeyPatch()
    mp.setenv("IRIS_GRPC_KEY", "k3y")
    spec = iris_pipeline(
        "iris-grpc", store, port, grpc_port=grpc_port, auth={"api_key_env": "IRIS_GRPC_KEY"}
    )
    register_quick_model(spec)
    wait_serve_stopped()  # Serve takes gRPC options only when it starts
    try:
        yield Client().serve(spec), spec, store
    finally:
        serve.shutdown()
        mp.undo()


@pytest.fixture(scope="module")
def client(served):
    import tritonclient.grpc as triton

    result, _, _ = served
    return triton.InferenceServerClient(result.grpc)


def test_tritonclient_grpc_infers_what_http_predicts(served, client):
    from tritonclient.utils import InferenceServerException

    result, _, _ = served
    assert result.grpc.startswith("127.0.0.1:")
    key = {"authorization": "Bearer k3y"}
    assert client.is_server_live(headers=V2_APP)
    assert client.is_model_ready("iris-grpc", headers=V2_APP | key)
    with pytest.raises(InferenceServerException, match="missing or wrong bearer key"):
        client.is_model_ready("iris-grpc", headers=V2_APP)  # only the key shows the model
    meta = client.get_model_metadata("iris-grpc", headers=V2_APP | key)
    assert (meta.inputs[0].name, list(meta.inputs[0].shape)) == ("features", [-1, 4])
    assert [o.name for o in meta.outputs] == ["probabilities", "class"]

    answer = client.infer("iris-grpc", [_features(FLOWERS)], headers=V2_APP | key)
    http = httpx.post(
        f"{result.endpoint}/predict",
        json={"instances": FLOWERS.tolist()},
        headers={"Authorization": "Bearer k3y"},
    ).json()["predictions"]
    assert answer.as_numpy("class").tolist() == [p["class"] for p in http] == [0, 0, 1, 2]
    assert np.allclose(
        answer.as_numpy("probabilities"), [p["probabilities"] for p in http], atol=1e-5
    )
    assert answer.get_response().model_version == result.versions["model"]


def test_grpc_errors_name_the_problem(client):
    from tritonclient.utils import InferenceServerException

    assert_grpc_answers_and_refuses(client, "iris-grpc", "k3y")
    with pytest.raises(InferenceServerException) as caught:  # Serve routes gRPC by this
        client.infer("iris-grpc", [_features(FLOWERS)], headers={"authorization": "Bearer k3y"})
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "Application metadata not set" in caught.value.message()


def test_a_model_without_a_key_does_not_answer_over_grpc(served, client):
    from tritonclient.utils import InferenceServerException

    result, spec, store = served
    open_spec = iris_pipeline("iris-open", store, spec.serve.port)  # no auth, no grpc_port
    register_quick_model(open_spec)
    opened = Client().serve(open_spec)
    assert opened.grpc is None

    def refusal() -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("iris-open", [_features(FLOWERS)], headers=V2_APP)
        return caught.value.status(), caught.value.message()

    # right after a deploy the router may still be settling (seen once: UNKNOWN)
    wait_for(lambda: refusal()[0] != "StatusCode.UNKNOWN", 30, "the router to know iris-open")
    status, message = refusal()
    assert status == "StatusCode.PERMISSION_DENIED", message
    assert "served without a key" in message
    # over HTTP, on loopback, it answers as before
    reply = httpx.post(f"{opened.endpoint}/predict", json={"instances": FLOWERS.tolist()})
    assert [p["class"] for p in reply.json()["predictions"]] == [0, 0, 1, 2]


def test_a_running_serve_keeps_its_grpc_port_and_says_so(served):
    result, spec, _ = served
    other = spec.model_copy(
        update={"serve": spec.serve.model_copy(update={"grpc_port": free_port()})}
    )
    with pytest.raises(ClusterError, match="already runs on port") as caught:
        Client().serve(other)
    assert str(spec.serve.grpc_port) in str(caught.value)
