"""Attack: a caller sends what costs the server more than it should (an alias bomb, a spec
padded to megabytes, a body without a length, numbers past SQLite's range) or what breaks a
file system call (a NUL byte). Each is a 4xx naming the limit or the field, nothing is
queued, and an authenticated caller's refusal is one audit row."""

from __future__ import annotations

import pytest

from orchestrator.scheduling.access import AccessConfig
from tests.helpers import spec_text
from tests.security.conftest import submit_body

# 342 bytes that expand to 9^9 (387 million) strings once PyYAML resolves the aliases
BOMB = "name: nlp-bomb\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
).replace(
    "b: &b [*a",
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\nb: &b [*a',
    1,
)


def _rows(tenancy) -> list:
    return tenancy.store.audit.entries()


def test_an_alias_bomb_and_a_padded_spec_are_refused_by_their_limits(tenancy):
    api = tenancy.serve(AccessConfig(max_spec_bytes=64 * 1024))
    bob = api.as_("bob")
    before = len(_rows(tenancy))

    bomb = bob.post("/jobs", json=submit_body(BOMB))
    assert bomb.status_code == 413, bomb.text
    assert "more than 20,000 values once its YAML aliases" in bomb.json()["detail"]

    padded = spec_text("nlp-pad", "rows.csv") + "# " + "x" * (70 * 1024) + "\n"
    big = bob.post("/jobs", json=submit_body(padded))
    assert big.status_code == 413 and "at most 65,536" in big.json()["detail"]
    assert "--max-spec-bytes" in big.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds as the bytes arrive
        yield b'{"spec_text": "'
        for _ in range(300):
            yield b"y" * 1024
        yield b'", "spec_path": "p.yaml", "cwd": "/"}'

    chunked = bob.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "over this server's limit" in chunked.text

    assert tenancy.store.queued() == []
    refusals = [(e.user, e.action, e.outcome.split(":")[0]) for e in _rows(tenancy)[before:]]
    assert refusals == [("bob", "submit", "refused (413)")] * 2  # the body cap is before auth


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=9223372036854775808", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("state=exploded", "state"),
    ],  # fmt: skip
)
def test_query_parameters_are_checked_by_their_model(tenancy, query, field):
    answer = tenancy.serve().as_("root").get(f"/jobs?{query}")
    assert answer.status_code == 422 and field in answer.text


@pytest.mark.parametrize("who", ["root", "bob"])
@pytest.mark.parametrize(
    "body",
    [
        submit_body(spec_text("nlp-n", "rows\x00.csv")),
        submit_body(spec_text("nlp-n", "rows.csv"), cwd="/tmp\x00/x"),
        submit_body(spec_text("nlp-n", "rows.csv"), spec_path="p\x00.yaml"),
        submit_body(spec_text("nlp-n", "rows.csv"), env={"A\nB": "1"}),
        submit_body(spec_text("nlp-n", "rows.csv", train={"storage_path": "/tmp/\x00"})),
        submit_body(spec_text("nlp-n", "rows.csv", tracking={"tracking_uri": "sqlite:///a\x00"})),
    ],
    ids=["source", "cwd", "spec_path", "env", "storage_path", "tracking_uri"],
)
def test_a_nul_or_control_character_is_a_4xx_not_a_500(tenancy, who, body):
    answer = tenancy.serve().as_(who).post("/jobs", json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert "control" in answer.text or "plain text" in answer.text
    assert tenancy.store.queued() == []
