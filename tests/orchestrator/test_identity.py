"""Users, teams and the audit trail in queue.db, without Ray: tokens stored hashed, the first
user an admin, revocation at once, and a chain that names the row someone changed."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sqlite3
import stat

import pytest

from orchestrator.scheduling.audit import HEAD_FILE, KEY_FILE
from orchestrator.scheduling.identity import LOCAL_ADMIN, IdentityError
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.store import JobStore
from tests.helpers import spec_text


@pytest.fixture
def store(tmp_path):
    store = JobStore(tmp_path / "queue.db")
    yield store
    store.close()


def test_tokens_are_random_stored_hashed_and_revocable(store, tmp_path):
    identities = store.identities
    assert not identities.enforced()
    with pytest.raises(IdentityError, match="the first user must be an admin"):
        identities.add_user("alice", "vision", "member")
    root = identities.add_user("root", "admins", "admin")
    assert identities.enforced()
    identities.add_team("vision")
    alice = identities.add_user("alice", "vision", "member")
    assert alice.token.startswith(f"orch_{alice.user.token_id}_") and len(alice.token) == 57
    assert alice.token != root.token
    rows = sqlite3.connect(tmp_path / "queue.db").execute("SELECT * FROM users").fetchall()
    stored = [value for row in rows for value in row]
    assert alice.token not in stored and root.token not in stored
    assert hashlib.sha256(alice.token.encode()).hexdigest() in stored

    assert identities.authenticate(alice.token).name == "alice"
    for wrong in ("", "nonsense", alice.token[:-1] + "x", root.token.replace("orch_", "orc_")):
        assert identities.authenticate(wrong) is None
    identities.revoke("alice")
    assert identities.authenticate(alice.token) is None  # at once
    assert identities.authenticate(root.token).admin

    from orchestrator.scheduling.access import Unauthenticated, caller

    for header, message in (
        (f"Bearer {alice.token}", "unknown or revoked token"),
        (f"Bearer {root.token[:-1]}", "malformed token: an orch token is orch_<8 hex>_<43"),
        ("Bearer orch_zz_x", "malformed token"),
        ("Basic abc", "this queue has users: send your token"),
    ):
        with pytest.raises(Unauthenticated, match=message):
            caller(identities, header)
    assert caller(identities, f"Bearer {root.token}").name == "root"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ids: ids.add_user("bob", "nlp", "member"), "unknown team 'nlp'"),
        (lambda ids: ids.add_user("bob", "vision", "owner"), "role 'owner': use one of"),
        (lambda ids: ids.add_user("Bob!", "vision", "member"), "user name 'Bob!'"),
        (lambda ids: ids.add_user("root", "admins", "admin"), "user 'root' exists already"),
        (lambda ids: ids.add_team("vision"), "team 'vision' exists already"),
        (lambda ids: ids.revoke("nobody"), "no live user 'nobody'"),
        (lambda ids: ids.revoke("root"), "'root' is the last admin"),
    ],
)
def test_bad_identity_calls_name_the_problem_and_change_nothing(store, call, message):
    store.identities.add_user("root", "admins", "admin")
    store.identities.add_team("vision")
    before = (store.identities.users(), store.identities.teams())
    with pytest.raises(IdentityError, match=message):
        call(store.identities)
    assert (store.identities.users(), store.identities.teams()) == before


def test_users_and_the_trail_survive_reopening(tmp_path):
    store = JobStore(tmp_path / "queue.db")
    token = store.identities.add_user("root", "admins", "admin").token
    store.audit.append(user="root", team="admins", action="users.add", target="root",
                       address="cli")  # fmt: skip
    store.close()
    again = JobStore(tmp_path / "queue.db")
    assert again.identities.authenticate(token).name == "root"
    assert [e.action for e in again.audit.entries()] == ["users.add"]
    assert again.audit.verify().ok
    again.close()


def _trail(store, n=4):
    for i in range(n):
        store.audit.append(
            user="alice" if i % 2 else "bob", team="vision", action="cancel",
            target=f"job-00000{i}", address="127.0.0.1", outcome="ok",
        )  # fmt: skip


def test_the_audit_key_and_head_live_outside_the_database_readable_by_the_server_only(
    store, tmp_path
):
    _trail(store)
    for name in (KEY_FILE, HEAD_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert json.loads((tmp_path / HEAD_FILE).read_text())["seq"] == 4
    assert [e.user for e in store.audit.entries(user="alice")] == ["alice", "alice"]
    assert store.audit.verify().model_dump() == {
        "ok": True,
        "rows": 4,
        "problem": None,
        "seq": None,
    }


@pytest.mark.parametrize(
    "tamper, seq, problem",
    [
        ("UPDATE audit SET user = 'mallory' WHERE seq = 2", 2, "row 2 was changed"),
        ("DELETE FROM audit WHERE seq = 3", 3, "row 3 is missing"),
        ("DELETE FROM audit WHERE seq = 4", 4, "rows were removed from the end"),
        ("DELETE FROM audit", 4, "the trail ends at row 0"),
    ],
)
def test_verify_names_the_row_someone_edited_removed_or_cut(store, tmp_path, tamper, seq, problem):
    _trail(store)
    db = sqlite3.connect(tmp_path / "queue.db")
    db.execute(tamper)
    db.commit()
    verdict = store.audit.verify()
    assert not verdict.ok and verdict.seq == seq and problem in verdict.problem


def test_a_trail_rewritten_without_the_key_does_not_verify(store, tmp_path):
    _trail(store)
    (tmp_path / KEY_FILE).write_text("00" * 32)  # a forger's key: every MAC differs
    forged = JobStore(tmp_path / "queue.db")
    assert not forged.audit.verify().ok
    forged.close()


def test_the_cli_makes_the_first_user_an_admin_and_audits_every_change(tmp_path, capsys):
    from orchestrator.cli import main

    where = ["--state-dir", str(tmp_path)]
    assert main(["users", "add", "alice", "--team", "vision", *where]) == 2
    assert "the first user must be an admin" in capsys.readouterr().err
    assert main(["users", "add", "root", "--team", "admins", "--role", "admin", *where]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("orch_") and "users are now required" in printed[2]
    assert main(["teams", "add", "Vision!", *where]) == 2
    assert "team name 'Vision!'" in capsys.readouterr().err
    assert main(["teams", "add", "vision", *where]) == 0
    assert main(["users", "add", "alice", "--team", "vision", "--json", *where]) == 0
    made = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert made["user"]["role"] == "member" and made["token"].startswith("orch_")
    assert main(["audit", "--json", *where]) == 0
    trail = json.loads(capsys.readouterr().out)
    assert [(e["action"], e["target"], e["outcome"].split(":")[0]) for e in trail] == [
        ("users.add", "alice", "refused"),
        ("users.add", "root", "ok"),
        ("teams.add", "Vision!", "refused"),
        ("teams.add", "vision", "ok"),
        ("users.add", "alice", "ok"),
    ]
    assert {e["user"] for e in trail} == {f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"}
    assert main(["audit", "--verify", *where]) == 0


def test_team_quotas_are_set_checked_and_refuse_a_submit_beyond_them(tmp_path, capsys):
    from orchestrator.cli import main
    from orchestrator.scheduling.policy import create_policy
    from orchestrator.scheduling.scheduler import QuotaRefused, Scheduler, SubmitRequest

    where = ["--state-dir", str(tmp_path)]
    main(["users", "add", "root", "--team", "admins", "--role", "admin", *where])
    main(["teams", "add", "vision", *where])

    def exit_code(argv: list[str]) -> int:
        try:
            return main(argv)
        except SystemExit as stop:  # argparse refused a value
            return stop.code

    for bad, message in (
        (["--cpus", "-1"], "--cpus: input should be greater than or equal to 0"),
        (["--running", "two"], "invalid int value: 'two'"),
        (["--max-priority", "urgent"], "invalid priority value: 'urgent'"),
    ):
        capsys.readouterr()
        assert exit_code(["teams", "set", "vision", *bad, *where]) == 2
        assert message in capsys.readouterr().err
    assert main(["teams", "set", "nobody", "--cpus", "2", *where]) == 2
    assert "unknown team 'nobody'" in capsys.readouterr().err
    assert main(["teams", "set", "vision", "--cpus", "2", "--queued", "1",
                 "--max-priority", "normal", *where]) == 0  # fmt: skip
    assert "quota: cpus 2, queued 1, priority 50" in capsys.readouterr().out

    store = JobStore(tmp_path / "queue.db")
    alice = store.identities.add_user("alice", "vision", "member").user
    scheduler = Scheduler(store, None, create_policy(), tmp_path)
    spec = "name: vision-iris\ndata: {source: sklearn://iris}\nmodel: {type: mlp}\n"
    ask = SubmitRequest(spec_text=spec, spec_path="iris.yaml", cwd=str(tmp_path), priority="high")
    with pytest.raises(QuotaRefused, match="priority 100 is above team vision's limit of 50"):
        scheduler.submit(ask, alice)
    store.add(JobInfo(id="", name="w", pipeline="w", priority=50, demand={"CPU": 1},
                      spec_path="w.yaml", cwd="/", owner="alice", team="vision"))  # fmt: skip
    with pytest.raises(QuotaRefused, match="team vision has 1 jobs queued, its limit is 1"):
        scheduler.submit(ask.model_copy(update={"priority": "normal"}), alice)
    assert len(store.queued()) == 1  # nothing was queued
    store.close()


def test_user_quotas_and_a_quota_larger_than_the_cluster(tmp_path, capsys):
    """`orch users set` caps one user beside the team; a held-resource limit above the whole
    cluster (as the queue server last saw it) is refused naming the flag and the most it can
    be, and nothing changes."""
    from orchestrator.cli import main
    from orchestrator.scheduling.policy import create_policy
    from orchestrator.scheduling.scheduler import QuotaRefused, Scheduler, SubmitRequest

    where = ["--state-dir", str(tmp_path)]
    main(["users", "add", "root", "--team", "admins", "--role", "admin", *where])
    main(["teams", "add", "vision", *where])
    main(["users", "add", "alice", "--team", "vision", *where])
    store = JobStore(tmp_path / "queue.db")
    store.record_cluster({"CPU": 4.0, "memory": 8 * 2**30})
    store.close()
    capsys.readouterr()
    assert main(["teams", "set", "vision", "--cpus", "64", *where]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --cpus 64 is more than the whole cluster has (CPU 4, as the queue server last "
        "saw it); set at most 4"
    )
    assert main(["users", "set", "alice", "--memory", "16", *where]) == 2
    assert "--memory 16 GiB is more than the whole cluster has (memory 8 GiB" in (
        capsys.readouterr().err
    )
    assert main(["users", "set", "nobody", "--cpus", "1", *where]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert main(["users", "set", "alice", "--max-priority", "low", "--memory", "2", *where]) == 0
    assert "alice  quota: memory 2 GiB, priority 0" in capsys.readouterr().out

    store = JobStore(tmp_path / "queue.db")
    assert store.identities.quotas().teams == {}  # the refused team limit changed nothing
    assert store.identities.quotas().users["alice"].memory == 2
    scheduler = Scheduler(store, None, create_policy(), tmp_path)
    spec = "name: vision-iris\ndata: {source: sklearn://iris}\nmodel: {type: mlp}\n"
    ask = SubmitRequest(spec_text=spec, spec_path="iris.yaml", cwd=str(tmp_path))
    with pytest.raises(QuotaRefused, match="priority 50 is above user alice's limit of 0"):
        scheduler.submit(ask, store.identities.user("alice"))
    actions = [(e.action, e.target, e.outcome[:6]) for e in store.audit.entries()][-4:]
    assert actions == [
        ("teams.set", "vision", "refuse"),
        ("users.set", "alice", "refuse"),
        ("users.set", "nobody", "refuse"),
        ("users.set", "alice", 'ok: {"'),
    ]
    store.close()


@pytest.fixture
def teams_with_roots(tmp_path):
    """vision and nlp, each with its own data root; alice (vision) and bob (nlp)."""
    store = JobStore(tmp_path / "state" / "queue.db")
    ids = store.identities
    ids.add_user("root", "admins", "admin")
    people = {}
    for team, person in (("vision", "alice"), ("nlp", "bob")):
        root = tmp_path / "data" / team
        root.mkdir(parents=True)
        (root / "rows.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
        ids.add_team(team)
        ids.set_roots(team, [str(root)])
        people[person] = ids.add_user(person, team, "member").user
    yield store, people, tmp_path / "data"
    store.close()


def _submit(store, who, spec_text: str, **extra):
    from types import SimpleNamespace

    from orchestrator.scheduling.policy import create_policy
    from orchestrator.scheduling.scheduler import Scheduler, SubmitRequest

    node = {"CPU": 4.0, "memory": 8.0 * 2**30}  # each worker is charged 1 GiB at least
    cluster = SimpleNamespace(total=node, nodes=[node])
    ray = SimpleNamespace(resources=lambda: cluster)
    scheduler = Scheduler(store, ray, create_policy(), store.path.parent)
    ask = SubmitRequest(spec_text=spec_text, spec_path="p.yaml", cwd="/somewhere/of/bob",
                        env={"ORCH_HOME": "/home/bob/.orch"}, **extra)  # fmt: skip
    return scheduler.submit(ask, who)[0]


def test_a_member_spec_reaching_outside_the_team_is_refused_at_submit(teams_with_roots):
    from orchestrator.scheduling.boundary import OutsideBoundary

    store, people, data = teams_with_roots
    bob = people["bob"]
    alice_rows = str(data / "vision" / "rows.csv")
    with pytest.raises(OutsideBoundary, match=r"data.source: .*outside team nlp's roots"):
        _submit(store, bob, spec_text("nlp-steal", alice_rows))
    link = data / "nlp" / "shortcut.csv"
    link.symlink_to(data / "vision" / "rows.csv")  # a link inside nlp's root, leading out
    with pytest.raises(
        OutsideBoundary, match=r"data.source: '.*shortcut.csv': leads outside team nlp's roots"
    ):
        _submit(store, bob, spec_text("nlp-link", str(link)))
    for sections, message in (
        ({"tracking": {"experiment": "vision-exp"}}, "tracking.experiment"),
        ({"register": {"model_name": "vision-model"}}, "register.model_name"),
        ({"tracking": {"tracking_uri": "http://mlflow:5000"}}, "leave tracking.tracking_uri"),
        ({"serve": {"name": "nlp-app", "host": "0.0.0.0"}}, "serve.host '0.0.0.0'"),
    ):
        with pytest.raises(OutsideBoundary, match=message):
            _submit(store, bob, spec_text("nlp-x", str(data / "nlp" / "rows.csv"), **sections))
    assert store.queued() == []  # nothing was queued

    job = _submit(store, bob, spec_text("nlp-ok", "rows.csv"))  # relative: from the team's root
    assert job.cwd == str((data / "nlp").resolve())  # the server's choice, not bob's
    assert job.env["ORCH_HOME"] == str(store.path.parent.parent)  # the server's, not bob's
    admin_job = _submit(store, LOCAL_ADMIN, spec_text("anything", alice_rows))  # admins unbounded
    assert admin_job.env == {"ORCH_HOME": "/home/bob/.orch"}


def test_the_admin_sdk_does_what_the_cli_does_typed_and_audited(tmp_path):
    """``Client().admin()``: the calls under ``orch users | teams | audit``, returning
    models; a refused change raises SpecError and is in the trail."""
    from orchestrator import Client, SpecError

    admin = Client().admin(str(tmp_path))
    added = admin.add_user("root", team="admins", role="admin")
    assert added.first and added.user.token.startswith("orch_") and added.mlflow_account is None
    assert admin.add_team("vision").name == "vision"
    (tmp_path / "data").mkdir()
    team = admin.set_team("vision", roots=[str(tmp_path / "data")], cpus=4)
    assert team.roots == [str(tmp_path / "data")] and team.quota.cpus == 4
    with pytest.raises(SpecError, match="team 'nope'"):
        admin.add_user("bob", team="nope")
    assert admin.set_user_quota("root", running=2).running == 2
    assert not admin.add_user("ops", team="admins", role="admin").first
    assert admin.revoke_user("root").user.revoked_at is not None
    trail = admin.audit()
    assert [(e.action, e.target, e.outcome.split(":")[0]) for e in trail] == [
        ("users.add", "root", "ok"),
        ("teams.add", "vision", "ok"),
        ("teams.set", "vision", "ok"),
        ("users.add", "bob", "refused"),
        ("users.set", "root", "ok"),
        ("users.add", "ops", "ok"),
        ("users.revoke", "root", "ok"),
    ]
    assert admin.audit(user="nobody") == [] and admin.verify_audit().ok
    assert sorted(u.name for u in admin.users()) == ["ops", "root"]
