"""Attack: learn about the server without a token, lure a user's client to another address,
read a secret file in the moment before its mode is set, or hold resources against every
higher priority without the right to."""

from __future__ import annotations

import json
import os
import stat

import pytest

from orchestrator.exceptions import ClusterError
from orchestrator.scheduling.access import AccessConfig
from tests.helpers import spec_text
from tests.security.conftest import submit_body


def test_healthz_says_nothing_without_a_token(tenancy):
    api = tenancy.serve()
    health = api.anon.get("/healthz")
    assert health.status_code == 200 and health.json() == {"ok": True}
    assert api.anon.get("/server").status_code == 401
    info = api.as_("carol").get("/server").json()  # any caller, a viewer too
    assert info["state_dir"] == str(tenancy.state) and "pid" in info


def _plant(home, url: str, mode: int = 0o600) -> None:
    queue = home / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    planted = queue / "server.json"
    planted.write_text(json.dumps({"url": url, "pid": 1, "dashboard_url": "http://127.0.0.1:8265"}))
    planted.chmod(mode)


@pytest.mark.parametrize(
    ("url", "mode", "message"),
    [("http://127.0.0.1:9", 0o666, "is not this user's alone"),
     ("http://203.0.113.7:8000", 0o600, "names a server at 203.0.113.7, not on this machine")],
    ids=["writable-by-others", "elsewhere"],
)  # fmt: skip
def test_a_planted_server_file_never_gets_the_users_token(
    tmp_path, monkeypatch, url, mode, message
):
    from orchestrator.queue_client import QueueClient

    project = tmp_path / "shared-project"  # a folder others can write, its ./.orch the home
    monkeypatch.chdir(project.parent)
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv("ORCH_HOME")
    monkeypatch.setenv("ORCH_TOKEN", "orch_0123abcd_" + "s" * 43)
    _plant(project / ".orch", url, mode)
    client = QueueClient.__new__(QueueClient)  # the client as it looks for its server
    client.state_dir, client.dashboard_url = project / ".orch" / "queue", "http://127.0.0.1:8265"
    with pytest.raises(ClusterError, match=message):
        client._running_server()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_server_file_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    from orchestrator.queue_client import QueueClient

    _plant(tmp_path / ".orch", "http://127.0.0.1:9")
    os.chown(tmp_path / ".orch" / "queue" / "server.json", 65534, 65534)
    client = QueueClient.__new__(QueueClient)
    client.state_dir, client.dashboard_url = tmp_path / ".orch" / "queue", "http://127.0.0.1:8265"
    with pytest.raises(ClusterError, match="owner uid 65534"):
        client._running_server()


def test_a_token_file_is_private_from_its_first_byte(tmp_path, monkeypatch):
    from pathlib import Path

    from cluster.local import _write_secret

    folder = tmp_path / "head"
    folder.mkdir()
    seen: list[tuple[int, str]] = []  # the file's mode and content as it becomes the token
    rename = Path.replace

    def watched(source, target):
        seen.append((stat.S_IMODE(os.stat(source).st_mode), Path(source).read_text()))
        return rename(source, target)

    monkeypatch.setattr(Path, "replace", watched)
    old = os.umask(0)  # the most open umask a user could have
    try:
        _write_secret(folder / "token", "s3cret")
    finally:
        os.umask(old)
    assert seen == [(0o600, "s3cret")]  # written whole into a private file, then renamed
    assert stat.S_IMODE((folder / "token").stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == ["token"]  # no staging file left


def test_a_job_nobody_may_preempt_takes_the_role_the_admin_grants(tenancy):
    pinned = spec_text("nlp-pin", "rows.csv", scheduling={"preemptible": False})
    refused = tenancy.serve().as_("bob").post("/jobs", json=submit_body(pinned))
    assert refused.status_code == 403
    assert "scheduling.preemptible: false" in refused.json()["detail"]
    assert "--non-preemptible-role" in refused.json()["detail"]
    assert tenancy.store.queued() == []
    granted = tenancy.serve(AccessConfig(non_preemptible_role="member")).as_("bob")
    accepted = granted.post("/jobs", json=submit_body(pinned))
    assert accepted.status_code == 201 and accepted.json()["preemptible"] is False
