"""The deployable cluster configs agree with the code: image, ports, env, entrypoint, auth."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from cluster import settings
from orchestrator.loader import load_spec
from tests.conftest import REPO

CLUSTER = REPO / "cluster"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_launcher_configs(provider):
    import jsonschema

    config = load_all(CLUSTER / "launcher" / f"{provider}.yaml")[0]
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # what `ray up` checks first
    assert config["provider"]["type"] == provider
    assert config["docker"]["image"] == settings.IMAGE
    options = " ".join(config["docker"]["run_options"])
    for key, value in settings.ENV.items():
        assert f"-e {key}={value}" in options
    assert f"-v {settings.DATA_DIR}:{settings.DATA_DIR}" in options
    head = [squash(c) for c in config["head_start_ray_commands"]]
    start = next(c for c in head if c.startswith("ray start --head"))
    assert f"--port={settings.PORTS['gcs']}" in start
    assert "--dashboard-host=127.0.0.1" in start
    assert f"--dashboard-port={settings.PORTS['dashboard']}" in start
    assert any(settings.MLFLOW_SERVER in c for c in head)
    workers = " ".join(config["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{settings.PORTS['gcs']}" in workers
    assert "/root/.ray/auth_token" in config["file_mounts"]  # the token reaches every node
    assert "-e RAY_AUTH_TOKEN_PATH=/root/.ray/auth_token" in options


def test_kuberay_raycluster():
    pvc, cluster = load_all(CLUSTER / "kuberay" / "raycluster.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == settings.RAY_VERSION == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["port"] == str(settings.PORTS["gcs"])
    assert head["rayStartParams"]["dashboard-port"] == str(settings.PORTS["dashboard"])
    containers = {c["name"]: c for c in head["template"]["spec"]["containers"]}
    workers = [c for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    for container in [*containers.values(), *workers]:
        assert container["image"] == settings.IMAGE
    for ray_container in [containers["ray-head"], *workers]:
        env = {e["name"]: e["value"] for e in ray_container["env"]}
        assert env == settings.ENV
    ports = {p["name"]: p["containerPort"] for p in containers["ray-head"]["ports"]}
    assert ports == {
        "gcs-server": settings.PORTS["gcs"],
        "dashboard": settings.PORTS["dashboard"],
        "serve": settings.PORTS["serve"],
    }
    mlflow = containers["mlflow"]
    assert squash(mlflow["command"][-1]) == settings.MLFLOW_SERVER
    mounts = {m["mountPath"] for c in containers.values() for m in c["volumeMounts"]}
    assert mounts == {settings.DATA_DIR}
    claim = head["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]


def test_kuberay_rayjob_runs_a_real_pipeline_on_that_cluster():
    (job,) = load_all(CLUSTER / "kuberay" / "rayjob.yaml")
    (cluster,) = [
        d for d in load_all(CLUSTER / "kuberay" / "raycluster.yaml") if d["kind"] == "RayCluster"
    ]
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert spec["entrypoint"].startswith(settings.ENTRYPOINT + " ")
    pipeline = shlex.split(spec["entrypoint"])[4]
    assert pipeline.startswith("/app/")  # the image's WORKDIR
    load_spec(REPO / pipeline.removeprefix("/app/"))  # it exists in the image and is valid
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"] == settings.ENV
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert submitter["image"] == settings.IMAGE
    token = next(e for e in submitter["env"] if e["name"] == "RAY_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == cluster["metadata"]["name"]


def test_dockerfile_installs_what_make_installs_and_sets_the_env():
    docker = (CLUSTER / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    torch_pin = re.search(r"torch==[0-9.]+", makefile).group(0)
    assert f"pip install --no-cache-dir {torch_pin}" in docker
    for key, value in settings.ENV.items():
        assert re.search(rf"\b{key}={re.escape(value)}\b", docker), key
    for package in ("orchestrator", "jobs", "tuning", "serve", "cluster", "examples"):
        assert f"COPY {package} {package}" in docker
