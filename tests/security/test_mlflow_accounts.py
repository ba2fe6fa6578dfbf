"""Attacks on MLflow with accounts: the head's tracking server (MLflow's basic-auth app, as
the cluster configs start it through cluster/mlflow_auth.py) and ``orch ui --read-only``
on a queue with users.

One real ``mlflow server --app-name basic-auth`` serves the whole module (the story's
teams: vision, alice's; nlp, whose experiment, run and model ``nlp-iris`` the admin made),
and one ``orch ui --read-only`` on a SQLite store with queue users."""

from __future__ import annotations

import configparser
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.helpers import stop_process_group, wait_for

API = "/api/2.0/mlflow"
ORCH = str(Path(sys.executable).with_name("orch"))


def _answer(url: str):
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def _started(command: list[str], log: Path, env: dict, health: str) -> subprocess.Popen:
    """``command`` in its own process group, once ``health`` answers 200."""
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip

    def healthy():
        assert process.poll() is None, log.read_text()[-3000:]
        answer = _answer(health)
        return answer is not None and answer.status_code == 200

    try:
        wait_for(healthy, 90, f"{command[:4]} to answer")
    except BaseException:
        stop_process_group(process)
        raise
    return process


def _seed(admin: httpx.Client) -> dict[str, str]:
    """As the admin (what the queue's jobs log in as): vision's and nlp's experiments, a
    run in each with one metric, and nlp-iris with versions 1 and 2, alias champion on 1."""
    ids = {}
    for team in ("vision", "nlp"):
        experiment = admin.post("/experiments/create", json={"name": f"{team}-exp"})
        ids[f"{team}_exp"] = experiment.raise_for_status().json()["experiment_id"]
        run = admin.post("/runs/create", json={"experiment_id": ids[f"{team}_exp"]})
        ids[f"{team}_run"] = run.raise_for_status().json()["run"]["info"]["run_id"]
        metric = {"run_id": ids[f"{team}_run"], "key": "val_accuracy", "value": 0.9,
                  "timestamp": 0, "step": 0}  # fmt: skip
        admin.post("/runs/log-metric", json=metric).raise_for_status()
    admin.post("/registered-models/create", json={"name": "nlp-iris"}).raise_for_status()
    for _ in range(2):
        version = {"name": "nlp-iris", "source": f"runs:/{ids['nlp_run']}/model",
                   "run_id": ids["nlp_run"]}  # fmt: skip
        admin.post("/model-versions/create", json=version).raise_for_status()
    alias = {"name": "nlp-iris", "alias": "champion", "version": "1"}
    admin.post("/registered-models/alias", json=alias).raise_for_status()
    return ids


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """The head's MLflow with accounts on a free loopback port: ``url``, the admin's
    ``login`` (read from the credentials file its first boot wrote), an ``admin`` client,
    the seeded ``ids``, the secrets' folder ``auth`` and the server's ``process``."""
    folder = tmp_path_factory.mktemp("mlflow-accounts")
    port = free_port()
    command = [
        sys.executable, "-m", "cluster.mlflow_auth", "--dir", str(folder / "auth"), "--",
        str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    process = _started(command, folder / "server.log", env, f"{url}/health")
    credentials = configparser.ConfigParser()
    credentials.read(folder / "auth" / "credentials")
    login = tuple(credentials["mlflow"][f"mlflow_tracking_{k}"] for k in ("username", "password"))
    admin = httpx.Client(base_url=url + API, auth=login, timeout=30)
    try:
        yield SimpleNamespace(
            url=url, login=login, admin=admin, ids=_seed(admin), auth=folder / "auth",
            process=process,
        )  # fmt: skip
    finally:
        admin.close()
        stop_process_group(process)


def _state(admin: httpx.Client, ids: dict) -> dict:
    """What an attack must leave as it was: experiments, metrics, the model's alias."""
    experiments = admin.post("/experiments/search", json={"max_results": 100}).json()
    history = admin.get(
        "/metrics/get-history", params={"run_id": ids["nlp_run"], "metric_key": "val_accuracy"}
    ).json()
    model = admin.get("/registered-models/get", params={"name": "nlp-iris"}).json()
    return {
        "experiments": sorted(e["name"] for e in experiments["experiments"]),
        "models": len(admin.get("/registered-models/search").json()["registered_models"]),
        "nlp_metric": [m["value"] for m in history["metrics"]],
        "aliases": model["registered_model"].get("aliases"),
    }


def _writes(ids: dict) -> list[tuple[str, dict]]:
    """Writes an attacker tries: into nlp's run and model, and new names in nlp's space."""
    return [
        ("/experiments/create", {"name": "nlp-squatted"}),
        ("/runs/create", {"experiment_id": ids["nlp_exp"]}),
        ("/runs/log-metric", {"run_id": ids["nlp_run"], "key": "val_accuracy", "value": 0.1,
                              "timestamp": 1, "step": 1}),
        ("/registered-models/alias", {"name": "nlp-iris", "alias": "champion", "version": "2"}),
        ("/registered-models/create", {"name": "nlp-squatted"}),
    ]  # fmt: skip


def test_an_anonymous_caller_gets_401_and_changes_nothing(tracking):
    before = _state(tracking.admin, tracking.ids)
    for path, body in _writes(tracking.ids):
        for api in (API, "/ajax-api/2.0/mlflow"):
            answer = httpx.post(f"{tracking.url}{api}{path}", json=body, timeout=30)
            assert answer.status_code == 401, (api, path, answer.text)
            assert answer.headers["www-authenticate"].startswith("Basic")
    search = f"{tracking.url}{API}/experiments/search"
    reads = httpx.post(search, json={"max_results": 10}, timeout=30)
    assert reads.status_code == 401  # reading needs an account too
    assert _state(tracking.admin, tracking.ids) == before
    assert before["aliases"] == [{"alias": "champion", "version": "1"}]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from orchestrator.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def on_the_head(tracking, monkeypatch):
    """`orch users` as on the head: MLflow is the tracking server, the admin's login at hand."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking.login[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking.login[1])
    return tracking


def test_alice_reads_every_team_writes_nowhere_and_revoking_her_closes_the_account(
    on_the_head, capsys
):
    tracking = on_the_head
    before = _state(tracking.admin, tracking.ids)
    assert _cli(capsys, "users", "add", "root", "--team", "admins", "--role", "admin")[0] == 0
    for team in ("vision", "nlp"):
        assert _cli(capsys, "teams", "add", team)[0] == 0
    code, out, _ = _cli(capsys, "users", "add", "alice", "--team", "vision", "--json")
    assert code == 0
    made = json.loads(out.splitlines()[0])
    assert made["mlflow_account"]["done"] is True
    alice = httpx.Client(base_url=tracking.url + API, auth=("alice", made["token"]), timeout=30)

    # she reads: every team's experiments, nlp's runs and its model
    found = alice.post("/experiments/search", json={"max_results": 100})
    assert found.status_code == 200
    assert {"vision-exp", "nlp-exp"} <= {e["name"] for e in found.json()["experiments"]}
    runs = alice.post("/runs/search", json={"experiment_ids": [tracking.ids["nlp_exp"]]})
    assert [r["info"]["run_id"] for r in runs.json()["runs"]] == [tracking.ids["nlp_run"]]
    assert alice.get("/registered-models/get", params={"name": "nlp-iris"}).status_code == 200

    # and writes nowhere: not nlp's run or model, no new name, not even her own team's run
    own = ("/runs/log-metric", {"run_id": tracking.ids["vision_run"], "key": "val_accuracy",
                                "value": 0.1, "timestamp": 1, "step": 1})  # fmt: skip
    for path, body in [*_writes(tracking.ids), own]:
        assert alice.post(path, json=body).status_code == 403, path
    rise = alice.patch("/users/update-admin", json={"username": "alice", "is_admin": True})
    assert rise.status_code == 403
    assert _state(tracking.admin, tracking.ids) == before

    code, out, _ = _cli(capsys, "users", "revoke", "alice")
    assert code == 0 and "MLflow account alice" in out and "deleted" in out
    assert alice.post("/experiments/search", json={"max_results": 10}).status_code == 401
    code, out, _ = _cli(capsys, "audit", "--json")
    assert any(
        e["action"] == "users.mlflow_account"
        and e["target"] == "alice"
        and "deleted" in e["outcome"]
        for e in json.loads(out)
    )
    alice.close()


def test_orch_users_add_never_takes_over_an_account_nor_adds_half_a_user(
    on_the_head, capsys, monkeypatch
):
    """An MLflow account that exists already (another admin's, say) is not given the new
    user's token, and a server that does not answer adds no queue user."""
    from orchestrator.queue_client import queue_dir
    from orchestrator.scheduling.store import JobStore

    tracking = on_the_head
    created = {"username": "mallory", "password": "mallorys-own-password"}
    tracking.admin.post("/users/create", json=created).raise_for_status()

    code, _, err = _cli(capsys, "users", "add", "mallory", "--team", "admins", "--role", "admin")
    assert code == 1
    assert "has an account 'mallory' already" in err.strip().splitlines()[-1]
    mallory = ("mallory", created["password"])
    assert httpx.get(f"{tracking.url}{API}/users/current", auth=mallory).status_code == 200

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # none there
    code, _, err = _cli(capsys, "users", "add", "zed", "--team", "admins", "--role", "admin")
    assert code == 1 and "does not answer" in err
    store = JobStore(queue_dir() / "queue.db")
    try:
        assert store.identities.user("mallory") is None and store.identities.user("zed") is None
    finally:
        store.close()


def test_the_servers_secrets_are_made_at_first_boot_and_only_its_user_reads_them(tracking):
    from cluster.mlflow_auth import prepare

    assert stat.S_IMODE(tracking.auth.stat().st_mode) == 0o700
    for name in ("admin_password", "flask_secret_key", "basic_auth.ini", "credentials"):
        assert stat.S_IMODE((tracking.auth / name).stat().st_mode) == 0o600, name
    password = (tracking.auth / "admin_password").read_text().strip()
    assert len(password) >= 43 and password == tracking.login[1]
    settings = configparser.ConfigParser()
    settings.read(tracking.auth / "basic_auth.ini")
    assert dict(settings["mlflow"]) == {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{tracking.auth / 'basic_auth.db'}",
        "admin_username": "admin",
        "admin_password": password,
        "authorization_function": "cluster.mlflow_auth:authenticate",
        "auth_cache_ttl_seconds": "60",
    }
    prepare(tracking.auth)  # a later boot keeps the password the accounts database holds
    assert (tracking.auth / "admin_password").read_text().strip() == password


def test_the_shipped_configs_start_mlflow_with_accounts_and_hold_no_password():
    import yaml

    from cluster import settings

    assert "mlflow server --app-name basic-auth --host 127.0.0.1" in settings.MLFLOW_SERVER
    for provider in ("aws", "gcp"):
        config = yaml.safe_load((REPO / "cluster" / "launcher" / f"{provider}.yaml").read_text())
        head = [" ".join(c.split()) for c in config["head_start_ray_commands"]]
        assert settings.MLFLOW_CREDENTIALS_LINK in head
        assert head.index(settings.MLFLOW_CREDENTIALS_LINK) < next(
            i for i, c in enumerate(head) if c.startswith("ray start --head")
        )  # linked before the queue server or a job can start
        assert any(settings.MLFLOW_SERVER in c for c in head)
    docs = yaml.safe_load_all((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    cluster = next(d for d in docs if d and d["kind"] == "RayCluster")
    containers = {
        c["name"]: c for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    }
    link = containers["ray-head"]["lifecycle"]["postStart"]["exec"]["command"]
    assert link == ["sh", "-c", settings.MLFLOW_CREDENTIALS_LINK]
    for path in (REPO / "cluster").rglob("*.yaml"):
        text = path.read_text()
        assert "admin_password" not in text and "MLFLOW_TRACKING_PASSWORD" not in text, path


# ---------------------------------------------------------------- orch ui --read-only


@pytest.fixture(scope="module")
def members_ui(tmp_path_factory):
    """``orch ui --read-only`` on a queue with users (root; alice of vision; bob of nlp;
    erin, revoked): its ``url``, their ``tokens``, the queue's ``store``, the seeded
    SQLite ``tracking_uri`` and ``run_id``, and its ``process``."""
    from mlflow import MlflowClient

    from orchestrator.scheduling.store import JobStore

    home = tmp_path_factory.mktemp("ui-home")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("vision-exp")
    run = client.create_run(experiment, run_name="vision-run")
    client.log_metric(run.info.run_id, "val_accuracy", 0.9)
    store = JobStore(home / "queue" / "queue.db")
    ids = store.identities
    tokens = {"root": ids.add_user("root", "admins", "admin").token}
    for person, team in (("alice", "vision"), ("bob", "nlp"), ("erin", "nlp")):
        if ids.team(team) is None:
            ids.add_team(team)
        tokens[person] = ids.add_user(person, team, "member").token
    ids.revoke("erin")
    port = free_port()
    env = {**os.environ, "ORCH_HOME": str(home), "MLFLOW_TRACKING_URI": tracking_uri}
    url = f"http://127.0.0.1:{port}"
    command = [ORCH, "ui", "--read-only", "--port", str(port)]
    process = _started(command, home / "ui.log", env, f"{url}/health")
    try:
        yield SimpleNamespace(
            url=url, tokens=tokens, store=store, experiment=experiment,
            run_id=run.info.run_id, tracking_uri=tracking_uri, process=process,
        )  # fmt: skip
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        store.close()


def test_the_read_only_ui_lets_in_only_a_live_user_with_her_own_token(members_ui):
    search = f"{members_ui.url}/ajax-api/2.0/mlflow/runs/search"
    body = {"experiment_ids": [members_ui.experiment]}
    tokens = members_ui.tokens
    refused = {
        "no credentials": None,
        "a wrong token": ("alice", tokens["alice"][:-4] + "AAAA"),
        "bob's name, alice's token": ("bob", tokens["alice"]),
        "a revoked user's own token": ("erin", tokens["erin"]),
        "a token as the name": (tokens["alice"], tokens["alice"]),
    }
    for case, login in refused.items():
        answer = httpx.post(search, json=body, auth=login, timeout=30)
        assert answer.status_code == 401, case
        assert answer.headers["www-authenticate"].startswith("Basic"), case
    page = httpx.get(f"{members_ui.url}/", timeout=30)
    assert page.status_code == 401  # the UI's own page too, not only its API

    alice = ("alice", tokens["alice"])
    found = httpx.post(search, json=body, auth=alice, timeout=30)
    assert found.status_code == 200
    assert [r["info"]["run_name"] for r in found.json()["runs"]] == ["vision-run"]
    write = httpx.post(
        f"{members_ui.url}/ajax-api/2.0/mlflow/runs/log-metric",
        json={"run_id": members_ui.run_id, "key": "val_accuracy", "value": 0.1,
              "timestamp": 1, "step": 1},
        auth=alice, timeout=30,
    )  # fmt: skip
    assert write.status_code >= 400 and "readonly database" in write.text
    from mlflow import MlflowClient

    history = MlflowClient(members_ui.tracking_uri).get_metric_history(
        members_ui.run_id, "val_accuracy"
    )
    assert [m.value for m in history] == [0.9]


def test_a_user_revoked_while_the_ui_runs_is_refused_on_her_next_request(members_ui):
    search = f"{members_ui.url}/ajax-api/2.0/mlflow/experiments/search"
    bob = ("bob", members_ui.tokens["bob"])
    body = {"max_results": 10}
    assert httpx.post(search, json=body, auth=bob, timeout=30).status_code == 200
    members_ui.store.identities.revoke("bob")
    assert httpx.post(search, json=body, auth=bob, timeout=30).status_code == 401


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP listener of ``pid`` and its descendants."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        for connection in process.net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                found.add((connection.laddr.ip, connection.laddr.port))
    return found


def test_no_port_these_servers_opened_takes_an_anonymous_write(tracking, members_ui):
    """Every TCP port the module's MLflow server and read-only UI listen on (children
    included): an unauthenticated write gets no 2xx from any of them."""
    listeners = _listening(tracking.process.pid) | _listening(members_ui.process.pid)
    ports = {port for _, port in listeners}
    assert {int(tracking.url.rsplit(":", 1)[1]), int(members_ui.url.rsplit(":", 1)[1])} <= ports
    for host, port in sorted(listeners):
        address = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
        for api in (API, "/ajax-api/2.0/mlflow"):
            try:
                answer = httpx.post(
                    f"http://{address}:{port}{api}/experiments/create",
                    json={"name": "walked-in"}, timeout=10,
                )  # fmt: skip
            except httpx.HTTPError:
                continue  # not HTTP: it took nothing either
            assert not 200 <= answer.status_code < 300, (host, port, api, answer.text)
    names = tracking.admin.post("/experiments/search", json={"max_results": 100}).json()
    assert "walked-in" not in {e["name"] for e in names["experiments"]}


def test_on_a_laptop_the_read_only_ui_is_plain_mlflow_ui(orch_home):
    """No queue user: `orch ui --read-only` runs `mlflow ui` as before, and `orch users`
    touches no MLflow (a SQLite store has no accounts)."""
    from mlflow import MlflowClient

    from orchestrator.mlflow_ui import ui_command
    from orchestrator.scheduling.mlflow_accounts import tracking_server

    MlflowClient().search_experiments()  # the store exists
    command = ui_command(port=5999, read_only=True)
    assert Path(command[0]).name == "mlflow" and command[1] == "ui"
    assert tracking_server() is None
