"""Ray Serve over real loopback HTTP: predictions, bad requests, batching, v2 clients, auth,
overload, traffic split, zero-downtime rollout, and `serve deploy` of an emitted config.

One Serve instance for the module (as Ray Serve's own tests share one); the models live in a
module-wide MLflow store named in each spec's tracking section. Under HAProxy (the embedded
Ray's ingress) only: what these tests check is the app's behind either ingress, and the
API through both ingresses is test_ingress.py's (HTTP and gRPC on a plain `ray start` head).
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris

from orchestrator import Client
from orchestrator.events import StageStarted
from orchestrator.exceptions import ClusterError
from serve.registry import Registry
from tests.conftest import free_port
from tests.helpers import wait_for
from tests.serve.conftest import pipeline, register_quick_model

pytestmark = pytest.mark.slow
DIGITS = load_digits().data


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('serve-store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def serve_port(ray_session):
    from ray import serve

    port = free_port()
    yield port
    serve.shutdown()


def spec_for(store: str, port: int, **serve):
    name = serve.pop("model_name", "digits-classifier")
    sections = {
        "tracking": {"tracking_uri": store},
        "register": {"model_name": name},
        "serve": {"name": "digits", "cpus_per_replica": 0.25, "port": port} | serve,
    }
    if name == "iris-classifier":
        sections |= {"name": "iris-serve", "data": {"source": "sklearn://iris"}}
        sections["model"] = {"type": "mlp", "params": {"hidden_sizes": [16]}}
    return pipeline(**sections)


@pytest.fixture(scope="module")
def digits_app(store, serve_port) -> str:
    spec = spec_for(store, serve_port, quantization="dynamic-int8")
    register_quick_model(spec)
    served = Client().serve(spec)
    assert served.endpoint == f"http://127.0.0.1:{serve_port}/digits"
    return served.endpoint


def champion(store: str) -> str:
    """The version serving as digits-classifier@champion now (a test may have promoted
    another: none depends on which)."""
    return Registry(store).alias_holder("digits-classifier", "champion")


def test_predictions_over_http_match_the_model(digits_app, store):
    data = load_digits()
    rows = data.data[-200:]
    response = httpx.post(f"{digits_app}/predict", json={"instances": rows.tolist()})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "digits-classifier", "version": champion(store), "alias": None}
    predicted = [p["class"] for p in body["predictions"]]
    assert np.mean(np.array(predicted) == data.target[-200:]) > 0.9
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-3 for p in body["predictions"])
    health = httpx.get(f"{digits_app}/healthz").json()
    assert health["status"] == "ok" and health["quantization"] == "dynamic-int8"
    assert httpx.get(f"{digits_app}/docs").status_code == 200
    openapi = httpx.get(f"{digits_app}/openapi.json").json()
    assert "/predict" in openapi["paths"] and "/healthz" in openapi["paths"]


@pytest.mark.parametrize(
    "content, status, message",
    [
        (b"{oops", 400, "malformed JSON"),
        (b"", 400, "empty body"),
        (b'{"instances": []}', 422, '\\"instances\\" is empty'),
        (b'{"instances": [[1, 2, 3]]}', 422, "has 3 features; the model takes 64"),
        (b'{"instances": [["x"' + b", 0" * 63 + b"]]}", 422, "features must be numbers"),
        (b'{"instances": [[NaN' + b", 0" * 63 + b"]]}", 422, "is nan"),
        (b'{"instances": [[' + b"0, " * 400_000 + b"0]]}", 413, "above the limit"),
    ],
)
def test_bad_requests_get_4xx_and_the_replica_keeps_serving(digits_app, content, status, message):
    response = httpx.post(
        f"{digits_app}/predict", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.text
    ok = httpx.post(f"{digits_app}/predict", json={"instances": DIGITS[:1].tolist()})
    assert ok.status_code == 200


def test_one_bad_request_does_not_fail_the_good_ones_batched_with_it(digits_app):
    good = {"instances": DIGITS[:1].tolist()}
    bad = {"instances": [DIGITS[0].tolist()[:63]]}
    bodies = [good] * 15 + [bad] + [good] * 16
    barrier = threading.Barrier(len(bodies))

    def send(body):
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(f"{digits_app}/predict", json=body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(send, bodies))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 31 and statuses[15] == 422
    assert {r.json()["predictions"][0]["class"] for i, r in enumerate(responses) if i != 15} == {0}


def test_open_inference_protocol_v2_with_tritonclient(digits_app, store, serve_port, monkeypatch):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    # a second pipeline, with a bearer key: the v2 router reaches both by model name
    monkeypatch.setenv("IRIS_KEY", "s3cret")
    iris = spec_for(
        store,
        serve_port,
        model_name="iris-classifier",
        name="iris",
        auth={"api_key_env": "IRIS_KEY"},
    )
    register_quick_model(iris)
    Client().serve(iris)

    client = triton.InferenceServerClient(f"127.0.0.1:{serve_port}")
    assert client.is_server_ready() and client.is_model_ready("digits-classifier")
    meta = client.get_model_metadata("digits-classifier")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    tensor = triton.InferInput("features", [3, 64], "FP32")
    tensor.set_data_from_numpy(DIGITS[:3].astype(np.float32))  # binary tensor extension
    result = client.infer("digits-classifier", [tensor])
    assert result.as_numpy("class").tolist() == [0, 1, 2]
    assert result.as_numpy("probabilities").shape == (3, 10)

    flowers = load_iris().data[:2].astype(np.float32)
    tensor = triton.InferInput("features", [2, 4], "FP32")
    tensor.set_data_from_numpy(flowers, binary_data=False)
    with pytest.raises(InferenceServerException, match="missing or wrong bearer key") as refused:
        client.infer("iris-classifier", [tensor])
    assert refused.value.status() == "401"
    result = client.infer("iris-classifier", [tensor], headers={"Authorization": "Bearer s3cret"})
    assert result.as_numpy("class").tolist() == [0, 0]
    base = f"http://127.0.0.1:{serve_port}"
    assert (
        httpx.post(f"{base}/iris/predict", json={"instances": flowers.tolist()}).status_code == 401
    )
    wrong = httpx.get(f"{base}/v2/models/nope")
    assert wrong.status_code == 404 and "served: digits-classifier" in wrong.text
    # JSON tensors work too (what the KServe SDK sends)
    infer = {
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": DIGITS[0].tolist()}]
    }
    response = httpx.post(f"{base}/v2/models/digits-classifier/infer", json=infer)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["class"]["data"] == [0] and outputs["probabilities"]["shape"] == [1, 10]


def test_overload_gets_503_with_retry_after(digits_app, store, serve_port):
    spec = spec_for(
        store,
        serve_port,
        name="narrow",
        max_ongoing_requests=2,
        max_queued_requests=1,
        max_body_bytes=4_000_000,
        batching={"max_batch_size": 2},
        autoscaling={"min_replicas": 1, "max_replicas": 1},
    )
    endpoint = Client().serve(spec).endpoint
    barrier = threading.Barrier(12)
    big = json.dumps({"instances": np.resize(DIGITS, (5000, 64)).tolist()})  # ~0.1 s each

    def send(_):
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(
                f"{endpoint}/predict", content=big, headers={"content-type": "application/json"}
            )

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    statuses = sorted(r.status_code for r in responses)
    rejected = [r for r in responses if r.status_code == 503]
    assert statuses.count(200) >= 2 and len(rejected) >= 6, statuses
    assert all(r.headers.get("retry-after") == "1" for r in rejected)
    # through the SDK, so /v2 routes digits-classifier back to the module's app (a bare
    # serve.delete left it pointing at the deleted one, for whichever test ran next)
    assert Client().stop_serving(spec) is True


def test_traffic_splits_between_aliases_by_percent(digits_app, store, serve_port):
    from ray import serve

    spec = spec_for(store, serve_port, name="split", traffic={"champion": 70, "challenger": 30})
    challenger = register_quick_model(spec, alias="challenger", seed=1)
    endpoint = Client().serve(spec).endpoint
    first = champion(store)
    seen = {first: 0, challenger: 0}

    def draw(client: httpx.Client) -> list[str]:  # one client's 50 requests, one at a time
        body = {"instances": DIGITS[:1].tolist()}
        return [client.post(f"{endpoint}/predict", json=body).json()["model"]["version"]
                for _ in range(50)]  # fmt: skip

    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(6) as pool:
        for versions in pool.map(draw, [client] * 6):
            for version in versions:
                seen[version] += 1
    # 300 draws at p=0.3: mean 90, sd 7.9; the band is over 4 sd wide each side
    assert 55 <= seen[challenger] <= 125 and sum(seen.values()) == 300
    # /v2 routes the shared model name to the app deployed last: split, for now.
    v2 = f"http://127.0.0.1:{serve_port}/v2/models/digits-classifier"
    assert httpx.get(v2, timeout=30).json()["versions"] == [first, challenger]

    # Taking split down leaves digits serving, and /v2 goes back to it.
    assert Client().stop_serving(spec) is True
    assert "split" not in serve.status().applications
    assert httpx.post(f"{endpoint}/predict", json={"instances": [[0.0] * 64]}).status_code == 404
    reply = httpx.post(f"{digits_app}/predict", json={"instances": DIGITS[:1].tolist()})
    assert reply.status_code == 200
    # (the router caches a model's metadata for 2 s)
    wait_for(lambda: httpx.get(v2, timeout=30).json()["versions"] == [first], 30, "/v2 to digits")
    assert Client().stop_serving(spec) is False


def test_promoting_and_serving_again_rolls_replicas_without_failing_a_request(
    digits_app, store, serve_port
):
    spec = spec_for(store, serve_port, quantization="dynamic-int8")
    before = champion(store)
    version = register_quick_model(spec, alias=None, seed=2)
    Registry(store).promote("digits-classifier", version, "champion")
    statuses, versions, stop = [], [], threading.Event()

    def client_loop():
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                reply = client.post(
                    f"{digits_app}/predict", json={"instances": DIGITS[:2].tolist()}
                )
                statuses.append(reply.status_code)
                if reply.status_code == 200:
                    versions.append(reply.json()["model"]["version"])

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        Client().serve(spec)
        deadline = time.monotonic() + 60
        while (not versions or versions[-1] != version) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        thread.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    assert versions[0] == before and versions[-1] == version


def test_replicas_that_cannot_fit_are_refused_up_front(store, serve_port):
    spec = spec_for(store, serve_port, name="huge", cpus_per_replica=64)
    refused = r"needs 64.1 CPUs .* 0.1 per router\) but the Ray cluster has 2"
    with pytest.raises(ClusterError, match=refused):
        Client().serve(spec)


def test_serve_deploy_accepts_the_emitted_config(store, serve_port, tmp_path, ray_session):
    spec = spec_for(store, serve_port, quantization="dynamic-int8")
    config = tmp_path / "serve.yaml"
    Client().serve(spec, emit_config=str(config))
    dashboard = "http://" + ray_session._private.worker.global_worker.node.address_info["webui_url"]
    serve_cli = str(Path(sys.executable).parent / "serve")
    deployed = subprocess.run(
        [serve_cli, "deploy", str(config), "-a", dashboard], capture_output=True, text=True
    )
    assert deployed.returncode == 0, deployed.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = subprocess.run(
            [serve_cli, "status", "-a", dashboard], capture_output=True, text=True
        ).stdout
        if "DEPLOYING" not in status and status.count("status: RUNNING") >= 2:
            break
        time.sleep(2)
    assert "digits:" in status and "orch-v2:" in status and "DEPLOY_FAILED" not in status
    reply = httpx.post(
        f"http://127.0.0.1:{serve_port}/digits/predict", json={"instances": DIGITS[:1].tolist()}
    )
    assert reply.status_code == 200 and reply.json()["predictions"][0]["class"] == 0
    champion = Registry(store).alias_holder("digits-classifier", "champion")
    assert json.loads(reply.text)["model"]["version"] == champion  # since the rollout


def test_foreground_serving_turns_ctrl_c_into_a_clean_stop(store, serve_port, digits_app):
    """What `orch serve` (and `orch run` with a serve section) does without --address: once
    the serve stage starts, Ctrl-C only asks to stop; after the deploy Serve shuts down
    cleanly. (make demo drives the CLI itself the same way.) Stopping Serve takes the
    module's shared app down too: it is served again at the end, so that no test depends
    on running before this one."""
    import os
    import signal

    from orchestrator.foreground import ForegroundServing

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    foreground = ForegroundServing(shutdown_ray=False)  # the test session's Ray stays up
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, StageStarted) and event.stage == "serve":
            foreground.arm()
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right as the deploy begins

    spec = spec_for(store, serve_port, name="fg")
    served = Client().serve(spec, on_event=on_event)  # no KeyboardInterrupt: deploy finishes
    assert httpx.get(f"{served.endpoint}/healthz").status_code == 200
    assert foreground.stop.is_set()
    foreground.wait_then_shutdown()  # returns at once and takes Serve down
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.endpoint}/healthz", timeout=2)
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C behaves as before again
    Client().serve(spec_for(store, serve_port, quantization="dynamic-int8"))
    assert httpx.get(f"{digits_app}/healthz").status_code == 200
