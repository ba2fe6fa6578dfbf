"""The model registry through the queue server: everyone reads it, a promote or rollback
takes the role the server's settings name (a member only its team's models), a deploy in a
member's spec too, and every change (refusals included) is in the audit trail.

The server's API runs on a real socket (uvicorn on 127.0.0.1) over a real MLflow store;
no Ray is needed for the registry, so none is started."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import mlflow
import pytest

from orchestrator.cli import main
from orchestrator.scheduling.access import AccessConfig
from orchestrator.scheduling.store import JobStore


@pytest.fixture
def registry_server(orch_home, tmp_path):
    """A queue server's API on 127.0.0.1 (registry role: admin, the default), with root
    (admin), alice (vision) and bob (nlp), and vision-iris with versions 1 and 2 in the
    server's MLflow store."""
    import uvicorn

    from orchestrator.scheduling.policy import create_policy
    from orchestrator.scheduling.scheduler import Scheduler
    from orchestrator.scheduling.server import ServerInfo, _listening_socket, build_api

    state = orch_home / "queue"
    store = JobStore(state / "queue.db")
    ids = store.identities
    tokens = {"root": ids.add_user("root", "admins", "admin").token}
    for team, person in (("vision", "alice"), ("nlp", "bob")):
        ids.add_team(team)
        tokens[person] = ids.add_user(person, team, "member").token

    client = mlflow.MlflowClient()
    client.create_registered_model("vision-iris")
    experiment = client.create_experiment("vision-runs", (tmp_path / "artifacts").as_uri())
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text("weights", "model/weights.txt")
        source = f"runs:/{run.info.run_id}/model"
        client.create_model_version("vision-iris", source, run.info.run_id)

    def serve(access: AccessConfig):
        node = {"CPU": 4.0, "memory": 8.0 * 2**30}  # each worker is charged 1 GiB at least
        cluster = SimpleNamespace(total=node, nodes=[node])
        ray = SimpleNamespace(resources=lambda: cluster)
        scheduler = Scheduler(store, ray, create_policy(), state, access=access)
        sock = _listening_socket("127.0.0.1", 0)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        info = ServerInfo(url=url, pid=0, dashboard_url="", state_dir=str(state), started_at=0)
        server = uvicorn.Server(uvicorn.Config(build_api(scheduler, info), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        from tests.helpers import wait_for

        wait_for(lambda: server.started, 30, "the API to listen")
        servers.append((server, thread))
        return url

    servers: list = []
    yield SimpleNamespace(serve=serve, tokens=tokens, store=store, client=client)
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
    store.close()


def orch(argv: list[str], token: str, monkeypatch) -> int:
    monkeypatch.setenv("ORCH_TOKEN", token)
    return main(argv)


def holder(client, alias="champion") -> str | None:
    try:
        return str(client.get_model_version_by_alias("vision-iris", alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def test_registry_changes_take_the_servers_role_and_are_audited(
    registry_server, monkeypatch, capsys
):
    r = registry_server
    url = r.serve(AccessConfig())  # admins only change the registry
    via = ["models", "--server", url]

    # everyone reads it: a member lists and shows models through the server
    assert orch([*via, "list", "--json"], r.tokens["bob"], monkeypatch) == 0
    listed = __import__("json").loads(capsys.readouterr().out)
    assert [m["name"] for m in listed] == ["vision-iris"] and listed[0]["versions"] == 2

    # a member may not promote, even their own team's model: 403 naming the setting
    assert orch([*via, "promote", "vision-iris", "2"], r.tokens["alice"], monkeypatch) == 1
    assert "takes role admin on this server" in capsys.readouterr().err
    assert holder(r.client) is None  # nothing changed

    # the admin may, and may roll back
    assert orch([*via, "promote", "vision-iris", "1"], r.tokens["root"], monkeypatch) == 0
    assert orch([*via, "promote", "vision-iris", "2"], r.tokens["root"], monkeypatch) == 0
    assert holder(r.client) == "2"
    assert orch([*via, "rollback", "vision-iris"], r.tokens["root"], monkeypatch) == 0
    assert "version 2 -> version 1" in capsys.readouterr().out
    assert holder(r.client) == "1"
    # a version that does not exist: refused (409) with MLflow's reason, nothing changes
    assert orch([*via, "promote", "vision-iris", "9"], r.tokens["root"], monkeypatch) == 1
    assert "no version '9'" in capsys.readouterr().err and holder(r.client) == "1"

    # with --registry-role member: alice promotes her team's model, bob may not touch it
    url = r.serve(AccessConfig(registry_role="member"))
    via = ["models", "--server", url]
    assert orch([*via, "promote", "vision-iris", "2"], r.tokens["alice"], monkeypatch) == 0
    assert holder(r.client) == "2"
    assert orch([*via, "rollback", "vision-iris"], r.tokens["bob"], monkeypatch) == 1
    assert "'vision-iris' is not team nlp's" in capsys.readouterr().err
    assert holder(r.client) == "2"

    trail = [(e.user, e.action, e.target, e.outcome.split(":")[0]) for e in r.store.audit.entries()]
    assert trail == [
        ("alice", "models.promote", "vision-iris", "refused (403)"),
        ("root", "models.promote", "vision-iris", "ok"),
        ("root", "models.promote", "vision-iris", "ok"),
        ("root", "models.rollback", "vision-iris", "ok"),
        ("root", "models.promote", "vision-iris", "refused (409)"),
        ("alice", "models.promote", "vision-iris", "ok"),
        ("bob", "models.rollback", "vision-iris", "refused (403)"),
    ]
    assert r.store.audit.verify().ok


def test_a_members_deploy_takes_the_registry_role_too(registry_server, tmp_path):
    """A spec with a serve section deploys a model: under the default setting a member's is
    refused at submit (403, audited, nothing queued); with --registry-role member it queues."""
    import httpx
    import yaml

    r = registry_server
    spec = yaml.safe_dump({
        "name": "vision-iris",
        "data": {"source": "sklearn://iris"},
        "model": {"type": "mlp"},
        "serve": {"name": "vision-iris"},
    })  # fmt: skip
    body = {"spec_text": spec, "spec_path": "iris.yaml", "cwd": str(tmp_path)}
    alice = {"Authorization": f"Bearer {r.tokens['alice']}"}
    url = r.serve(AccessConfig())
    refused = httpx.post(f"{url}/jobs", json=body, headers=alice, timeout=30)
    assert refused.status_code == 403
    assert "to deploy a model takes role admin" in refused.json()["detail"]
    assert r.store.queued() == []
    url = r.serve(AccessConfig(registry_role="member"))
    queued = httpx.post(f"{url}/jobs", json=body, headers=alice, timeout=30)
    assert queued.status_code == 201 and queued.json()["owner"] == "alice"
    outcomes = [(e.action, e.outcome.split(":")[0]) for e in r.store.audit.entries()]
    assert outcomes == [("submit", "refused (403)"), ("submit", "ok")]
