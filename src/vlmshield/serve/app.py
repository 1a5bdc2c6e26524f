"""The FastAPI app: OpenAI-compatible routes over a backend, defended per model id.

Routes: ``POST /v1/chat/completions`` (streaming or not, ``n=1``), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health`` (never needs a key), ``GET /metrics`` (Prometheus text).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 bad request
(validation, rejected images, limits), 401 missing/invalid key, 404 unknown model or route, 413 body
too large, 429 queue full (with ``Retry-After``), 499 client left (logged only), 500 the model failed
(details only in the server log), 503 shutting down, 504 the request's time budget ran out.

Example:
    >>> import vlmshield
    >>> from vlmshield.serve import create_app
    >>> vlm = vlmshield.load_vlm("path/to/llava")  # doctest: +SKIP
    >>> app = create_app(vlm, "llava", defenses=["coca:alpha=1", "ecso"], allow_undefended=False)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmshield.backends.base import ChatBackend
from vlmshield.errors import UserInputError
from vlmshield.serve.auth import APIKeyMiddleware
from vlmshield.serve.deployments import build_deployments
from vlmshield.serve.errors import APIError
from vlmshield.serve.middleware import AccessLogMiddleware, BodyLimitMiddleware
from vlmshield.serve.routes import add_routes
from vlmshield.serve.settings import DeploymentSpec, ServeSettings, parse_deployment, validated
from vlmshield.serve.state import ServerState

log = logging.getLogger("vlmshield.serve")


def create_app(
    backend: ChatBackend,
    model_name: str,
    settings: ServeSettings | None = None,
    *,
    defenses: Sequence[DeploymentSpec | str] = (),
    allow_undefended: bool | None = None,
    **overrides: Any,
) -> FastAPI:
    """An OpenAI-compatible FastAPI app answering with ``backend``, one model id per deployment.

    Args:
        backend: a :class:`~vlmshield.models.VLM` (every feature) or any :class:`ChatBackend` (no
            defenses that need a local model, no token-by-token streaming, no prompt-token limit).
        model_name: the undefended model's id; defended ids are ``<model_name>:<name>``.
        settings: limits and switches; ``overrides`` change single fields (``max_batch_size=16``).
        defenses: ``[NAME=]SPEC`` strings or :class:`DeploymentSpec` objects.
        allow_undefended: serve ``model_name`` itself; default: only when no defense is given.

    Example:
        >>> app = create_app(vlm, "M", defenses=["coca", "strict=coca:alpha=4"])  # doctest: +SKIP
    """
    if settings is None:
        settings = validated(ServeSettings, "server settings", **overrides)
    elif overrides:
        settings = validated(ServeSettings, "server settings", **{**settings.model_dump(), **overrides})
    specs = [parse_deployment(d) if isinstance(d, str) else d for d in defenses]
    undefended = allow_undefended if allow_undefended is not None else not specs
    server = ServerState(backend, build_deployments(model_name, specs, allow_undefended=undefended), settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            server.draining = True
            drained = await run_in_threadpool(server.batcher.stop, settings.graceful_timeout_s)
            if not drained:
                log.error("the batch worker did not finish within %.0f s", settings.graceful_timeout_s)

    app = FastAPI(
        title="vlmshield OpenAI-compatible server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = server
    app.state.backend = backend
    app.state.model_name = model_name
    app.state.batcher = server.batcher
    app.state.settings = settings
    app.state.metrics = server.metrics
    # outermost first: access log -> keys -> body limit -> routes
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(APIKeyMiddleware, keys=settings.key_bytes())
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log, on_complete=server.on_complete)
    _handlers(app)
    add_routes(app, server)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if errs and errs[0].get("type") == "json_invalid":
            msg = "invalid request: the body is not valid JSON"
        elif errs:
            loc = ".".join(str(x) for x in errs[0].get("loc", ()) if x != "body")
            msg = f"invalid request: {loc or 'body'}: {errs[0].get('msg')}"
        else:
            msg = "invalid request"
        request.state.error_code = "invalid_request"
        return APIError(400, msg, "invalid_request").response()

    @app.exception_handler(UserInputError)
    async def _user_error(request: Request, exc: UserInputError) -> JSONResponse:
        request.state.error_code = "invalid_request"
        return APIError(400, str(exc), "invalid_request").response()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        request.state.error_code = exc.code
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code, "http_error"
        )
        request.state.error_code = code
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return APIError(exc.status_code, message, code).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        log.error("request %s: unhandled %s", rid, type(exc).__name__, exc_info=exc)
        return APIError(500, f"internal server error; request id {rid}", "internal_error").response()
