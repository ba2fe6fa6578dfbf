"""Ray's token, as Ray itself finds it, without importing Ray (the CLI stays fast).

Order: $RAY_AUTH_TOKEN, the file at $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token. The queue
server asks for the same bearer token as the cluster when RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import os
from pathlib import Path


def ray_token() -> str | None:
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path)] if path else [Path.home() / ".ray" / "auth_token"]
    for candidate in candidates:
        try:
            return candidate.read_text().strip() or None
        except OSError:
            continue
    return None


def token_required() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def bearer_headers(token: str | None) -> dict[str, str]:
    """The Authorization header that carries ``token`` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def auth_headers() -> dict[str, str]:
    return bearer_headers(ray_token())
