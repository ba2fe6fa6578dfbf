"""The threat model (docs/security.md) lists each protection with the test that attacks it:
every test file it names exists, and every attack in tests/security is in it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_protection_names_a_test_that_exists_and_every_attack_is_listed():
    page = (REPO / "docs" / "security.md").read_text()
    named = set(re.findall(r"`(tests/[\w/]+\.py)", page))
    assert named, "docs/security.md names no test"
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert missing == [], f"docs/security.md names tests that do not exist: {missing}"
    attacks = {
        f"tests/security/{path.name}"
        for path in (REPO / "tests" / "security").glob("test_*.py")
        if path.name != Path(__file__).name
    }
    assert sorted(attacks - named) == [], "attacks in tests/security missing from the page"
