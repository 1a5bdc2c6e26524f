"""Pure ASGI middleware: a request-body size limit, request ids and JSON access-log lines.

Access-log lines go to the ``vlmshield.serve.access`` logger, one JSON object per request::

    {"ts": "2025-01-01T12:00:00.123Z", "request_id": "req_...", "client": "127.0.0.1", "method": "POST",
     "path": "/v1/chat/completions", "status": 200, "duration_ms": 41.2, "model": "M:coca",
     "stream": false, "prompt_tokens": 29, "completion_tokens": 16}

Headers (and so API keys) and message contents are never logged.

Example:
    >>> app = AccessLogMiddleware(BodyLimitMiddleware(inner_app, 1 << 20))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmshield.serve.errors import APIError

ACCESS_LOGGER = "vlmshield.serve.access"
#: Request-state keys copied into the access log line when a route sets them.
LOG_FIELDS = ("model", "stream", "prompt_tokens", "completion_tokens", "error_code", "queue_s")


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTP exception, so the framework answers it with 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413, f"the request body is over this server's {max_bytes:,}-byte limit; send smaller images"
        )


class BodyLimitMiddleware:
    """413 when the body is over ``max_bytes`` (by ``Content-Length``, or counted as it arrives)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(413, BodyTooLarge(self.max_bytes).detail, "request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    scope.setdefault("state", {})["error_code"] = "request_too_large"
                    await self._error().response()(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                scope.setdefault("state", {})["error_code"] = "request_too_large"
                await self._error().response()(scope, receive, send)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AccessLogMiddleware:
    """Gives each request an id (``x-request-id`` response header) and logs one JSON line for it.

    ``on_complete(scope, status, seconds)`` runs after every request (the metrics hook).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        enabled: bool = True,
        on_complete: Callable[[Scope, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.on_complete = on_complete
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            if self.on_complete is not None:
                self.on_complete(scope, status or 500, seconds)
            if self.enabled:
                line: dict[str, Any] = {
                    "ts": _now_iso(),
                    "request_id": request_id,
                    "client": (scope.get("client") or ("-", 0))[0],
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status or 500,
                    "duration_ms": round(seconds * 1000, 2),
                }
                for key in LOG_FIELDS:
                    if state.get(key) is not None:
                        line[key] = state[key]
                self.log.info(json.dumps(line, separators=(",", ":")))
