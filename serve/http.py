"""What both Serve applications (a pipeline's ingress, the /v2 router) do with a request
before the model: the API key check, the size-capped body, the JSON error answer."""

# No `from __future__ import annotations`: FastAPI must see real types (Request).

import hashlib
import hmac

from fastapi import Request
from fastapi.responses import JSONResponse

from serve.protocol import check_size


class Unauthorized(Exception):
    pass


def key_matches(authorization: str, key_sha256: str) -> bool:
    """``Bearer <key>`` whose SHA-256 is ``key_sha256``, compared in constant time (HTTP
    ``Authorization`` header or gRPC ``authorization`` metadata)."""
    scheme, _, key = authorization.partition(" ")
    given = hashlib.sha256(key.strip().encode()).hexdigest()
    return scheme.lower() == "bearer" and hmac.compare_digest(given, key_sha256)


def check_key(request: Request, key_sha256: str | None) -> None:
    if key_sha256 is not None and not key_matches(
        request.headers.get("authorization", ""), key_sha256
    ):
        raise Unauthorized()


def _error(status: int, message: str) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    check_size(request.headers.get("content-length"), None, limit)
    body = await request.body()
    check_size(None, len(body), limit)
    return body
