"""Attack: a member takes another team's names. With ``vision-a`` a team, ``vision-a-x``
would belong to both ``vision`` (by prefix) and ``vision-a``; so a team's name has no '-',
the team part of a name is exact, and every name a spec holds (experiment, registered
model, Serve application, the model served) is checked. Names the queue signs with
(``admin``, ...) cannot be taken by a user."""

from __future__ import annotations

import pytest

from orchestrator.scheduling.access import AccessConfig
from orchestrator.scheduling.boundary import team_owns
from orchestrator.scheduling.identity import IdentityError
from tests.helpers import spec_text
from tests.security.conftest import submit_body


def test_a_team_name_with_a_dash_is_refused_with_the_reason(tenancy):
    ids = tenancy.store.identities
    with pytest.raises(IdentityError, match=r"team name 'vision-a': a team name has no '-'"):
        ids.add_team("vision-a")
    with pytest.raises(IdentityError, match=r"team name 'vision-a': a team name has no '-'"):
        ids.add_user("dana", "vision-a", "admin")  # an admin's new team is checked too
    assert [t.name for t in ids.teams()] == ["admins", "nlp", "vision"]
    assert ids.add_team("vision_a").name == "vision_a"


def test_the_team_part_of_a_name_is_exact():
    assert team_owns("vision", "vision-resnet")
    assert team_owns("vision", "vision-a-x")  # vision's model "a-x"
    assert not team_owns("vision", "visionary-x")
    assert not team_owns("vision", "vision")
    assert not team_owns("vision", "vision-")
    assert not team_owns("vision", "nlp-vision-x")


@pytest.mark.parametrize("name", ["admin", "orch", "scheduler"])
def test_the_names_the_queue_signs_with_are_reserved(tenancy, name):
    with pytest.raises(IdentityError, match=rf"user name '{name}' is reserved"):
        tenancy.store.identities.add_user(name, "vision", "member")
    assert tenancy.store.identities.user(name) is None


SERVE = {"name": "vision-app", "model": "models:/vision-model@champion"}
TAKEN = [
    ("nlp-pipeline", {}, "tracking.experiment (or the pipeline name) 'nlp-pipeline'"),
    ("vision-p", {"tracking": {"experiment": "nlp-exp"}}, "tracking.experiment"),
    ("vision-p", {"register": {"model_name": "nlp-model"}}, "register.model_name"),
    ("vision-p", {"serve": {**SERVE, "name": "nlp-app"}}, "serve.name 'nlp-app'"),
    ("vision-p", {"serve": {**SERVE, "model": "models:/nlp-model@champion"}}, "serve.model"),
    ("vision-p", {"serve": {**SERVE, "model": "models:/nlp-model/3"}}, "serve.model 'nlp-model'"),
    ("vision-p", {"serve": {**SERVE, "model": "models:/visionary-m@a"}}, "serve.model"),
]


def test_alice_cannot_register_serve_or_track_under_another_teams_names(tenancy):
    api = tenancy.serve(AccessConfig(registry_role="member"))  # members may deploy their own
    alice = api.as_("alice")
    for name, sections, field in TAKEN:
        answer = alice.post("/jobs", json=submit_body(spec_text(name, "rows.csv", **sections)))
        assert answer.status_code == 403, (sections, answer.text)
        assert field in answer.json()["detail"], answer.text
        assert "names its experiments, models and Serve applications vision-" in answer.text
    assert tenancy.store.queued() == []
    mine = spec_text("vision-p", "rows.csv", serve=SERVE)
    assert alice.post("/jobs", json=submit_body(mine)).status_code == 201
    promote = alice.post("/models/nlp-model/promote", json={"version": "1", "alias": "champion"})
    assert promote.status_code == 403
    assert "'nlp-model' is not team vision's" in promote.json()["detail"]
