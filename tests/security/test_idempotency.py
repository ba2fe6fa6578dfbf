"""Attack: a member reads another member's idempotency key from the job listing and
submits with it, to get that member's job back (spec, environment, result), or takes a key
first so that the other's submit lands on theirs. Keys are their user's: never shown to
others, and the same key from another user is another key."""

from __future__ import annotations

from tests.helpers import spec_text
from tests.security.conftest import submit_body


def test_a_key_is_its_users_own_and_never_shown_to_others(tenancy):
    api = tenancy.serve()
    alice, bob = api.as_("alice"), api.as_("bob")
    mine = alice.post("/jobs", json=submit_body(spec_text("vision-a", "rows.csv"),
                                                idempotency_key="nightly-1"))  # fmt: skip
    assert mine.status_code == 201 and mine.json()["idempotency_key"] == "nightly-1"
    again = alice.post("/jobs", json=submit_body(spec_text("vision-a", "rows.csv"),
                                                 idempotency_key="nightly-1"))  # fmt: skip
    assert again.status_code == 200 and again.json()["id"] == mine.json()["id"]  # her own

    # bob sees alice's job in the listing, but not its key
    listed = {job["id"]: job for job in bob.get("/jobs").json()}
    assert listed[mine.json()["id"]]["idempotency_key"] is None
    assert bob.get(f"/jobs/{mine.json()['id']}").json()["idempotency_key"] is None

    # ...and her key from bob is bob's own key: a new job of his, not hers
    theirs = bob.post("/jobs", json=submit_body(spec_text("nlp-b", "rows.csv"),
                                                idempotency_key="nightly-1"))  # fmt: skip
    assert theirs.status_code == 201
    body = theirs.json()
    assert body["id"] != mine.json()["id"] and body["owner"] == "bob"
    assert "vision" not in theirs.text and str(tenancy.roots["vision"]) not in theirs.text

    # a key bob took first does not capture alice's submit either
    bob.post("/jobs", json=submit_body(spec_text("nlp-c", "rows.csv"), idempotency_key="squat"))
    hers = alice.post("/jobs", json=submit_body(spec_text("vision-c", "rows.csv"),
                                                idempotency_key="squat"))  # fmt: skip
    assert hers.status_code == 201 and hers.json()["owner"] == "alice"
    owners = sorted(job.owner for job in tenancy.store.queued())
    assert owners == ["alice", "alice", "bob", "bob"]
