"""Attack: a member names code of their own as the model. ``model.type:
vision_net:build`` with ``vision_net.py`` planted in the team's root would import the
member's file in the cluster's processes (the scheduler's, the job's, Ray's workers), with
the cluster's rights. A member's model is the zoo's or an installed plugin's: the import path
is refused at submit (403, the reason, nothing queued), and parsing the spec to refuse it
does not import it."""

from __future__ import annotations

from tests.helpers import spec_text
from tests.security.conftest import submit_body


def test_a_members_import_path_is_refused_and_an_installed_plugin_is_not(tenancy, monkeypatch):
    root = tenancy.roots["vision"]
    marker = root / "imported"
    (root / "vision_net.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef build(params, shape):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(root))  # as if the member's folder were importable
    alice = tenancy.serve().as_("alice")

    planted = spec_text("vision-p", "rows.csv", model={"type": "vision_net:build"})
    answer = alice.post("/jobs", json=submit_body(planted))
    assert answer.status_code == 403, answer.text
    detail = answer.json()["detail"]
    assert "model.type 'vision_net:build'" in detail and "Ask an admin to install" in detail
    assert tenancy.store.queued() == []
    assert not marker.exists()  # refused without running it

    installed = spec_text("vision-p", "rows.csv", model={"type": "residual-mlp"})
    accepted = alice.post("/jobs", json=submit_body(installed))
    assert accepted.status_code == 201, accepted.text
    assert [job.spec_text for job in tenancy.store.queued()] == [installed]


def test_an_admin_may_name_an_import_path(tenancy):
    """Admins are not bounded: the code is theirs to install or run."""
    root = tenancy.serve().as_("root")
    source = str(tenancy.roots["vision"] / "rows.csv")
    text = spec_text("admins-p", source, model={"type": "admin_models:build"})
    answer = root.post("/jobs", json=submit_body(text))
    assert answer.status_code == 201, answer.text
