"""One address, every entry point: `auto`, the GCS host:port and the dashboard URL, from
--address or RAY_ADDRESS, for the driver commands (orch run, orch serve) and the queue
commands, against a real token-auth head; anything else is refused in one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.address import AddressError, parse_address
from orchestrator.cli import main

ORCH = [sys.executable, "-m", "orchestrator"]
IRIS = """\
name: iris-addr
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [16]}}
train: {epochs: 4, batch_size: 16, workers: 1, resources_per_worker: {CPU: 1}}
serve: {name: iris-addr}
"""


@pytest.mark.parametrize(
    "text, kind",
    [
        ("auto", "auto"),
        ("127.0.0.1:6379", "gcs"),
        ("head-node.example.com:6379", "gcs"),
        ("[::1]:6379", "gcs"),
        ("http://[::1]:8265", "dashboard"),
        ("http://[::1]", "dashboard"),
        ("http://127.0.0.1:8265", "dashboard"),
        ("https://ray.example.com/", "dashboard"),
        ("http://127.0.0.1:8265/#/jobs", "dashboard"),  # copied from the browser
    ],
)
def test_the_three_forms_parse(text, kind):
    assert parse_address(text, "--address").kind == kind


@pytest.mark.parametrize(
    "text, says",
    [
        ("ray://127.0.0.1:10001", "Ray Client addresses (ray://) are not supported"),
        ("autp", "is not a Ray address"),
        ("127.0.0.1", "is not a Ray address"),
        ("127.0.0.1:99999", "is not a Ray address"),
        ("ftp://127.0.0.1:8265", "is not a Ray address"),
        ("http://127.0.0.1:8265/api/jobs/", "a dashboard URL has no path"),
        ("http://127.0.0.1:port", "is not a Ray address"),
    ],
)
def test_other_forms_are_refused_naming_the_forms(text, says):
    with pytest.raises(AddressError, match=r"auto', the GCS address host:port") as caught:
        parse_address(text, "RAY_ADDRESS")
    assert says in str(caught.value) and f"RAY_ADDRESS {text!r}" in str(caught.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "x.yaml", "--address", "ray://10.0.0.1:10001"],
        ["serve", "x.yaml", "--address", "localhost"],
        ["submit", "x.yaml", "--address", "http://:8265"],
        ["list", "--address", "auto:"],
        ["dashboard", "--address", "10.0.0.1"],
        ["cluster", "status", "--address", "10.0.0.1:x"],
    ],
)
def test_a_malformed_address_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address")
    assert "dashboard URL" in lines[0] and captured.out == ""


def test_a_malformed_RAY_ADDRESS_is_named_as_such_without_a_traceback(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "ray://head:10001"}
    done = subprocess.run(
        [*ORCH, "run", "x.yaml"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: RAY_ADDRESS 'ray://head:10001': Ray Client addresses (ray://) are not "
        "supported; use 'auto', the GCS address host:port (e.g. 127.0.0.1:6379), or the "
        "dashboard URL (e.g. http://127.0.0.1:8265)"
    ]


# ------------------------------------------------------------- on a real token-auth head


@pytest.fixture
def head(queue_head):
    """The session's shared token-auth head (tests/conftest.py), left idle after each test."""
    from tests.conftest import assert_head_left_idle

    yield queue_head
    assert_head_left_idle(queue_head)


@pytest.fixture
def user_env(head, orch_home, tmp_path):
    """A user's shell: token auth on, the head's token, no RAY_ADDRESS; the head recorded
    under ORCH_HOME/cluster as `orch cluster up` does (that is what `auto` finds)."""
    from cluster.local import HEAD_FILE

    (orch_home / "cluster").mkdir()
    head.save(orch_home / "cluster" / HEAD_FILE)
    env = head.env()
    env.update(ORCH_HOME=str(orch_home), DS_ACCELERATOR="cpu")
    (tmp_path / "iris.yaml").write_text(IRIS)
    return env


def forms(head) -> dict[str, str]:
    return {"auto": "auto", "gcs": head.gcs_address, "dashboard": head.dashboard_url}


def orch(args, env, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ORCH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_every_form_from_flag_and_env_reaches_the_cluster(
    head, user_env, orch_home, tmp_path, monkeypatch
):
    # The dashboard's node summary still says where the GCS is (what dashboard URLs need).
    from orchestrator.address import gcs_address

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", head.token_path)
    found = gcs_address(parse_address(head.dashboard_url, "--address"))
    assert found.endswith(":" + head.gcs_address.rsplit(":", 1)[1])

    ways = [
        (kind, source, ["--address", address] if source == "--address" else [],
         {**user_env, "RAY_ADDRESS": address} if source == "RAY_ADDRESS" else user_env)
        for kind, address in forms(head).items()
        for source in ("--address", "RAY_ADDRESS")
    ]  # fmt: skip
    # a driver: joins the cluster and asks Serve for the spec's application (the six
    # drivers at once: each is a separate Ray job, and most of their time is start-up)
    with ThreadPoolExecutor(len(ways)) as pool:
        downs = pool.map(
            lambda way: orch(["serve", "iris.yaml", "--down", "--json", *way[2]], way[3], tmp_path),
            ways,
        )
        for (kind, source, _, _), down in zip(ways, downs, strict=True):
            assert down.returncode == 0, (kind, source, down.stderr)
            assert json.loads(down.stdout) == {"app": "iris-addr", "stopped": False}
    servers = set()
    for kind, source, flag, env in ways:
        # the queue: talks to the dashboard and the queue server, never as a driver
        listed = orch(["list", "--json", *flag], env, tmp_path)
        assert listed.returncode == 0, (kind, source, listed.stderr)
        assert json.loads(listed.stdout) == []
        servers.add(json.loads((orch_home / "queue" / "server.json").read_text())["pid"])
        # the dashboard, and where its token lives (never the token itself)
        shown = orch(["dashboard", "--json", *flag], env, tmp_path)
        assert shown.returncode == 0, (kind, source, shown.stderr)
        info = json.loads(shown.stdout)
        assert info["dashboard_url"] == head.dashboard_url and info["auth"] == "token"
        assert info["token_path"] == head.token_path
        assert head.token not in shown.stdout + shown.stderr
    # one queue server answered every form: they all named the same cluster
    assert len(servers) == 1
    status = orch(
        ["cluster", "status", "--json", "--address", head.gcs_address], user_env, tmp_path
    )
    assert status.returncode == 0, status.stderr
    assert [n["cpus"] for n in json.loads(status.stdout)["ray_nodes"]] == [2.0]

    from tests.helpers import kill_server

    kill_server(orch_home / "queue", 15)


@pytest.mark.slow
def test_a_training_runs_end_to_end_with_the_dashboard_url_in_RAY_ADDRESS(head, user_env, tmp_path):
    env = {**user_env, "RAY_ADDRESS": head.dashboard_url}
    spec = tmp_path / "train.yaml"
    spec.write_text(
        IRIS.replace("serve: {name: iris-addr}\n", "").replace(
            "epochs: 4,", "epochs: 8, optimizer: {type: adam, lr: 0.05},"
        )
    )
    done = orch(["run", str(spec), "--json"], env, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout is one JSON document, whatever Ray printed
    assert result["status"] == "succeeded" and result["metrics"]["epoch"] == 8
    assert result["metrics"]["val_accuracy"] > 0.6
