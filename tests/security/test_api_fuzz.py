"""Attack: whatever an HTTP client sends the queue API (out-of-range numbers, NUL bytes,
wrong types, huge values), as an admin, a member, a viewer or nobody, it answers a 4xx
that says what was wrong, never a 500. Schemathesis generates the requests from the API's
own OpenAPI document, valid and invalid (a bounded number per operation and role)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

EXAMPLES = 60


@pytest.mark.parametrize("who", ["root", "bob", "carol", None])
def test_no_request_gets_a_server_error(tenancy, who):
    app, _ = tenancy.app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {tenancy.tokens[who]}"} if who else {}
    server_errors: list[str] = []

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=schema.as_strategy(mode, headers=headers))
        def call(case):
            response = case.call(headers=headers)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} "
                                     f"{case.query} {str(case.body)[:200]!r} -> "
                                     f"{response.status_code} {response.text[:200]}")  # fmt: skip

        call()
    assert server_errors == [], "\n".join(server_errors[:10])
    assert tenancy.store.audit.verify().ok
