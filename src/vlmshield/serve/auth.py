"""API keys: ``Authorization: Bearer <key>`` on every route but ``/health`` when keys are configured.

Keys are compared in constant time (:func:`hmac.compare_digest`, against every configured key, so the
time does not reveal which one nearly matched) and never logged or echoed.

Example:
    >>> check_bearer("Bearer " + "k" * 16, [b"k" * 16])
    True
    >>> check_bearer("Bearer nope", [b"k" * 16])
    False
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from vlmshield.serve.errors import APIError

#: Routes answered without a key (liveness probes).
OPEN_PATHS = frozenset({"/health"})


def check_bearer(header: str | None, keys: Sequence[bytes]) -> bool:
    """True when ``header`` is ``Bearer <one of keys>``."""
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    candidate = token.strip().encode("utf-8", "replace")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, key)
    return ok


class APIKeyMiddleware:
    """Pure ASGI middleware: 401 in OpenAI's error shape unless the bearer token is a configured key."""

    def __init__(self, app: ASGIApp, keys: Sequence[bytes]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if check_bearer(header, self.keys):
            await self.app(scope, receive, send)
            return
        if header is None:
            err = APIError(
                401,
                "missing API key: send it as 'Authorization: Bearer <key>' (the openai client's api_key)",
                "missing_api_key",
            )
        else:
            err = APIError(401, "invalid API key", "invalid_api_key")
        err.headers["www-authenticate"] = "Bearer"
        scope.setdefault("state", {})["error_code"] = err.code
        await err.response()(scope, receive, send)
