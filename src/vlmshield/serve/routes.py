"""The routes: ``/health``, ``/metrics``, ``/v1/models``, ``/v1/chat/completions`` (JSON or SSE).

A chat request is validated (model id, limits, per-request defense parameters), its images decoded
and its prompt tokens counted in worker threads, then queued as a :class:`~vlmshield.serve.batching.Job`;
the route waits for the job's events while watching for the client's disconnect and the request's
deadline.

Example:
    >>> add_routes(app, state)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from vlmshield.serve.batching import Delta, Done, Failed, Job, QueueFull, RowResult, ShuttingDown
from vlmshield.serve.deployments import public_details
from vlmshield.serve.errors import APIError
from vlmshield.serve.metrics import CONTENT_TYPE
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
from vlmshield.serve.settings import ServeSettings
from vlmshield.serve.state import CHAT_PATH, ServerState, to_api_error
from vlmshield.serve.streaming import (
    SSE_COMMENT,
    Disconnected,
    KeepAlive,
    SSEResponse,
    TextStream,
    TimedOut,
    job_events,
    sse,
    wait_disconnect,
)


def add_routes(app: FastAPI, server: ServerState) -> None:
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


def _record(server: ServerState, request: Request, job: Job, row: RowResult) -> None:
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


def _left(server: ServerState, request: Request, job: Job) -> None:
    if getattr(request.state, "error_code", None) == "client_disconnected":
        return
    request.state.error_code = "client_disconnected"
    server.metrics.disconnects.labels(model=job.model).inc()
    server.batcher.cancel(job)


def _timeout_error(server: ServerState) -> APIError:
    return APIError(
        504,
        f"the request took longer than {server.settings.request_timeout_s:g} s (queue wait + generation); "
        "retry later or ask for fewer tokens",
        "timeout",
    )


async def _answer(
    server: ServerState, request: Request, job: Job, deadline: float, extension: Any
) -> Response:
    rid = request.state.request_id
    disconnected = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        async for event in job_events(job, disconnected, deadline):
            if isinstance(event, Failed):
                raise to_api_error(event.error, rid)
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
    server: ServerState, request: Request, job: Job, deadline: float, include_usage: bool, extension: Any
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
                    err = to_api_error(event.error, rid)
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
