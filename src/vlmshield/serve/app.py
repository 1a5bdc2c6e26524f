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

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope

from vlmshield.backends.base import ChatBackend
from vlmshield.errors import UserInputError
from vlmshield.models import VLM
from vlmshield.serve.auth import APIKeyMiddleware
from vlmshield.serve.batching import (
    Batcher,
    Delta,
    Done,
    Failed,
    Job,
    JobCancelled,
    QueueFull,
    RowResult,
    ShuttingDown,
)
from vlmshield.serve.deployments import Deployment, PromptCounter, build_deployments, public_details, run_jobs
from vlmshield.serve.errors import APIError
from vlmshield.serve.metrics import CONTENT_TYPE, ServeMetrics
from vlmshield.serve.middleware import AccessLogMiddleware, BodyLimitMiddleware
from vlmshield.serve.schemas import (
    ChatCompletionRequest,
    VlmshieldOptions,
    chunk_body,
    completion_body,
    count_images,
    model_body,
    models_body,
    request_to_config,
    request_to_conversation,
    usage_body,
)
from vlmshield.serve.settings import DeploymentSpec, ServeSettings, parse_deployment, validated
from vlmshield.serve.streaming import (
    SSE_COMMENT,
    Disconnected,
    KeepAlive,
    ObservedVLM,
    SSEResponse,
    TextStream,
    TimedOut,
    job_events,
    sse,
    wait_disconnect,
)

log = logging.getLogger("vlmshield.serve")
CHAT_PATH = "/v1/chat/completions"


def _to_api_error(error: BaseException, request_id: str) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, UserInputError):
        return APIError(400, str(error), "invalid_request")
    if isinstance(error, JobCancelled):
        return APIError(499, "the request was cancelled", "cancelled")
    log.error("request %s failed: %s: %s", request_id, type(error).__name__, error, exc_info=error)
    return APIError(
        500,
        f"the model failed on this request ({type(error).__name__}); request id {request_id}",
        "model_error",
    )


class _Server:
    """What the routes share: settings, deployments, batcher, metrics."""

    def __init__(
        self,
        backend: ChatBackend,
        deployments: list[Deployment],
        settings: ServeSettings,
    ) -> None:
        self.settings = settings
        self.deployments = {d.model_id: d for d in deployments}
        self.metrics = ServeMetrics()
        self.created = int(time.time())
        self.draining = False
        self.vlm = backend if isinstance(backend, VLM) else None
        self.counter = PromptCounter(self.vlm) if self.vlm is not None else None
        self.observed = ObservedVLM(self.vlm) if self.vlm is not None else None
        self.backend = backend
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_s,
            max_queue=settings.max_queue,
            on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.set_queue,
            on_abort=lambda model: self.metrics.aborted_batches.labels(model=model).inc(),
        )

    # worker thread
    def _run_batch(self, jobs: list[Job]) -> list[RowResult]:
        if self.observed is not None:
            self.observed.begin(jobs)
            try:
                rows = run_jobs(self.observed, jobs)
            finally:
                self.observed.end()
        else:
            rows = run_jobs(self.backend, jobs)
        for job, row in zip(jobs, rows, strict=True):
            if not job.stream:
                continue
            if job.text_stream is None:
                job.emit(row.text)
                continue
            delta, ok = job.text_stream.finish(row.text)
            if not ok:
                self.metrics.stream_mismatches.labels(model=job.model).inc()
                log.warning("stream of %s diverged from its final answer", job.model)
            job.emit(delta)
        return rows

    def resolve(self, model: str | None) -> Deployment:
        ids = list(self.deployments)
        if model is None:
            if len(ids) == 1:
                return self.deployments[ids[0]]
            raise APIError(400, f"'model' is required; this server serves {', '.join(ids)}", "model_required")
        dep = self.deployments.get(model)
        if dep is None:
            raise APIError(
                404,
                f"model {model!r} is not served here; this server serves {', '.join(ids)}",
                "model_not_found",
                param="model",
            )
        return dep

    def on_complete(self, scope: Scope, status: int, seconds: float) -> None:
        if scope.get("path") != CHAT_PATH:
            return
        state = scope.get("state", {})
        model = state.get("model") or "-"
        self.metrics.requests.labels(model=model, status=str(status)).inc()
        code = state.get("error_code")
        if code is not None or status >= 400:
            self.metrics.errors.labels(model=model, code=code or str(status)).inc()
        self.metrics.latency.labels(model=model, stream=str(bool(state.get("stream"))).lower()).observe(
            seconds
        )


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
    server = _Server(backend, build_deployments(model_name, specs, allow_undefended=undefended), settings)

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
    _routes(app, server)
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


def _routes(app: FastAPI, server: _Server) -> None:
    settings = server.settings

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return models_body(list(server.deployments), server.created)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return model_body(server.resolve(model_id).model_id, server.created)

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request, req: ChatCompletionRequest) -> Any:
        t_start = time.monotonic()
        state = request.state
        state.stream = req.stream
        if server.draining or not server.batcher.accepting:
            raise APIError(
                503,
                "the server is shutting down; retry shortly",
                "shutting_down",
                headers={"retry-after": "5"},
            )
        dep = server.resolve(req.model)
        state.model = dep.model_id
        opts = req.vlmshield or VlmshieldOptions()
        _check_request(req, opts, settings)
        config = request_to_config(req, settings.default_max_tokens, settings.max_new_tokens)
        variant_key, defense = await run_in_threadpool(dep.variant, opts.defense_params)
        conv = await run_in_threadpool(request_to_conversation, req)
        prompt_tokens = None
        if server.counter is not None:
            prompt_tokens = await run_in_threadpool(server.counter.count, conv)
            if prompt_tokens > settings.max_prompt_tokens:
                raise APIError(
                    400,
                    f"the prompt has {prompt_tokens} tokens (images included), over this server's limit of "
                    f"{settings.max_prompt_tokens}; shorten it or send fewer images",
                    "prompt_too_long",
                    param="messages",
                )
        text_stream = None
        if req.stream and dep.incremental and server.vlm is not None:
            tok = server.vlm.tokenizer
            text_stream = TextStream(
                lambda ids: str(tok.decode(ids, skip_special_tokens=True)), server.vlm.eos_token_ids
            )
        job = Job(
            conv=conv,
            config=config,
            key=(dep.model_id, variant_key, config),
            model=dep.model_id,
            payload=defense,
            prompt_tokens=prompt_tokens,
            text_stream=text_stream,
            stream=req.stream,
            loop=asyncio.get_running_loop(),
        )
        try:
            server.batcher.submit(job)
        except QueueFull as e:
            raise APIError(
                429,
                f"the server is busy ({settings.max_queue} requests waiting); retry after {e.retry_after_s} s",
                "rate_limit_exceeded",
                headers={"retry-after": str(e.retry_after_s)},
            ) from None
        except ShuttingDown:
            raise APIError(503, "the server is shutting down; retry shortly", "shutting_down") from None
        deadline = t_start + settings.request_timeout_s
        extension = (
            (lambda row: {"defense": dep.defense_name, "details": public_details(row.details)})
            if opts.details
            else None
        )
        if req.stream:
            return _stream(server, request, job, deadline, req.include_usage, extension)
        return await _answer(server, request, job, deadline, extension)


def _check_request(req: ChatCompletionRequest, opts: VlmshieldOptions, settings: ServeSettings) -> None:
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported; send n=1", "unsupported", param="n")
    if req.stop:
        raise APIError(
            400, "stop sequences are not supported; leave 'stop' unset", "unsupported", param="stop"
        )
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options needs stream=true", "invalid_request", param="stream_options")
    if len(req.messages) > settings.max_messages:
        raise APIError(
            400,
            f"{len(req.messages)} messages, over this server's limit of {settings.max_messages}",
            "too_many_messages",
        )
    n_images = count_images(req)
    if n_images > settings.max_images:
        raise APIError(
            400,
            f"the request has {n_images} images, over this server's limit of {settings.max_images}; send fewer",
            "too_many_images",
            param="messages",
        )
    if opts.details and not settings.expose_details:
        raise APIError(
            400,
            "this server does not return defense details (the operator can enable them with --expose-details)",
            "details_not_exposed",
        )


def _record(server: _Server, request: Request, job: Job, row: RowResult) -> None:
    m = server.metrics
    request.state.prompt_tokens = row.prompt_tokens
    request.state.completion_tokens = row.completion_tokens
    m.prompt_tokens.labels(model=job.model).inc(row.prompt_tokens)
    m.completion_tokens.labels(model=job.model).inc(row.completion_tokens)
    if job.started_at is not None:
        wait = job.started_at - job.enqueued_at
        request.state.queue_s = round(wait, 4)
        m.queue_wait.labels(model=job.model).observe(wait)
    if row.details.get("flagged") is True:
        m.flagged.labels(model=job.model).inc()


def _left(server: _Server, request: Request, job: Job) -> None:
    if getattr(request.state, "error_code", None) == "client_disconnected":
        return
    request.state.error_code = "client_disconnected"
    server.metrics.disconnects.labels(model=job.model).inc()
    server.batcher.cancel(job)


def _timeout_error(server: _Server) -> APIError:
    return APIError(
        504,
        f"the request took longer than {server.settings.request_timeout_s:g} s (queue wait + generation); "
        "retry later or ask for fewer tokens",
        "timeout",
    )


async def _answer(server: _Server, request: Request, job: Job, deadline: float, extension: Any) -> Response:
    rid = request.state.request_id
    disconnected = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        async for event in job_events(job, disconnected, deadline):
            if isinstance(event, Failed):
                raise _to_api_error(event.error, rid)
            if isinstance(event, Done):
                row = event.row
                _record(server, request, job, row)
                body = completion_body(
                    completion_id=f"chatcmpl-{uuid.uuid4().hex}",
                    created=int(time.time()),
                    model=job.model,
                    text=row.text,
                    finish_reason=row.finish_reason,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    extension=extension(row) if extension else None,
                )
                return JSONResponse(body)
    except Disconnected:
        _left(server, request, job)
        return APIError(499, "the client disconnected", "client_disconnected").response()
    except TimedOut:
        server.batcher.cancel(job)
        raise _timeout_error(server) from None
    finally:
        disconnected.cancel()
    raise RuntimeError("the job ended without an answer")  # pragma: no cover


def _stream(
    server: _Server, request: Request, job: Job, deadline: float, include_usage: bool, extension: Any
) -> SSEResponse:
    rid = request.state.request_id
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    t0 = time.monotonic()

    def chunk(delta: dict[str, Any] | None, **kw: Any) -> bytes:
        return sse(
            chunk_body(
                completion_id=cid,
                created=created,
                model=job.model,
                delta=delta,
                include_usage=include_usage,
                **kw,
            )
        )

    async def produce(receive: Receive) -> AsyncIterator[bytes]:
        disconnected = asyncio.ensure_future(wait_disconnect(receive))
        first = True
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for event in job_events(job, disconnected, deadline, server.settings.stream_keepalive_s):
                if isinstance(event, KeepAlive):
                    yield SSE_COMMENT
                elif isinstance(event, Delta):
                    if first:
                        server.metrics.ttft.labels(model=job.model).observe(time.monotonic() - t0)
                        first = False
                    yield chunk({"content": event.text})
                elif isinstance(event, Done):
                    row = event.row
                    _record(server, request, job, row)
                    ext = extension(row) if extension else None
                    yield chunk({}, finish_reason=row.finish_reason, extension=ext)
                    if include_usage:
                        yield chunk(None, usage=usage_body(row.prompt_tokens, row.completion_tokens))
                    yield sse("[DONE]")
                elif isinstance(event, Failed):
                    err = _to_api_error(event.error, rid)
                    request.state.error_code = err.code
                    yield sse(err.body())
        except Disconnected:
            _left(server, request, job)
        except TimedOut:
            server.batcher.cancel(job)
            err = _timeout_error(server)
            request.state.error_code = err.code
            yield sse(err.body())
        finally:
            disconnected.cancel()
            if not job.finished:
                server.batcher.cancel(job)

    return SSEResponse(produce, on_disconnect=lambda: _left(server, request, job))
