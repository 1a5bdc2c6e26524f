"""Serve any :class:`~vlmshield.backends.ChatBackend` as an OpenAI-compatible HTTP endpoint.

``POST /v1/chat/completions`` (non-streaming, ``n=1``) and ``GET /v1/models``, plus ``GET /health``.
Images must be inline ``data:image/...;base64,`` URLs; they are decoded with the limits of
:mod:`vlmshield.images` (at most :data:`~vlmshield.images.MAX_IMAGE_BYTES` bytes and
:data:`~vlmshield.images.MAX_IMAGE_PIXELS` pixels, decompression bombs refused). The server never
fetches remote URLs or reads local files.

Concurrent requests are batched: a single worker thread takes up to ``max_batch_size`` queued requests
(waiting at most ``batch_wait_s`` for more to arrive), groups them by generation settings and calls
``backend.generate`` once per group. The worker also serialises access to the backend, so a local
model is never called from two threads at once. If a batch fails, its rows are retried one by one so a
single bad request cannot fail its neighbours.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad requests
(including validation errors and rejected images), 404 for an unknown model, 500 when the backend fails.

Example:
    >>> import vlmshield
    >>> from vlmshield.serve import serve
    >>> serve(vlmshield.load_vlm("path/to/llava"), port=8000)  # doctest: +SKIP
    # then: OpenAIChatBackend("http://127.0.0.1:8000/v1", model="path/to/llava")
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import queue
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from vlmshield.backends.base import ChatBackend
from vlmshield.conversation import Conversation, Message
from vlmshield.errors import ImageError, UserInputError
from vlmshield.generation import GenerationConfig, GenerationOutput
from vlmshield.images import MAX_IMAGE_BYTES, load_image_bytes

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise ImportError("vlmshield.serve needs FastAPI and uvicorn: pip install 'vlmshield[serve]'") from _e

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,(.*)$", re.DOTALL)
_MAX_B64_CHARS = (MAX_IMAGE_BYTES // 3 + 1) * 4


# -- images ----------------------------------------------------------------------------------------------
def decode_image_bytes(raw: bytes, what: str = "image") -> Image.Image:
    """Decode image bytes to RGB with the limits of :func:`vlmshield.images.load_image`."""
    return load_image_bytes(raw, what)


def decode_data_url(url: str, what: str = "image") -> Image.Image:
    """Decode a ``data:image/...;base64,...`` URL; anything else is refused (no fetching)."""
    m = _DATA_URL.match(url.strip())
    if not m:
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise ImageError(
            f"{what} URL {shown!r} is not a base64 data URL; send images inline as "
            "data:image/png;base64,... (this server does not fetch URLs or read files)"
        )
    b64 = "".join(m.group(1).split())
    if len(b64) > _MAX_B64_CHARS:
        raise ImageError(f"{what} is over the {MAX_IMAGE_BYTES / 1e6:.0f} MB limit; downscale it")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{what} data URL is not valid base64") from None
    return decode_image_bytes(raw, what)


# -- request schema ----------------------------------------------------------------------------------
class _ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str
    detail: str | None = None


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: _ImageURL | str | None = None


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat-completions request this server honours; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[_ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    min_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False


def request_to_conversation(req: ChatCompletionRequest) -> Conversation:
    """Build a :class:`Conversation` (images decoded with the safety limits)."""
    if not req.messages:
        raise UserInputError("'messages' is empty; send at least one user message")
    msgs: list[Message] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        texts: list[str] = []
        images: list[Image.Image] = []
        if isinstance(m.content, str):
            texts.append(m.content)
        elif m.content is not None:
            for part in m.content:
                if part.type == "text":
                    texts.append(part.text or "")
                else:
                    if role != "user":
                        raise UserInputError(
                            f"messages[{i}]: only user messages may carry images (got {m.role})"
                        )
                    if part.image_url is None:
                        raise UserInputError(f"messages[{i}]: an image_url part has no 'image_url'")
                    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                    images.append(decode_data_url(url, what=f"messages[{i}] image {len(images) + 1}"))
        msgs.append(Message(role, "\n".join(texts), tuple(images)))
    if not any(m.role == "user" for m in msgs):
        raise UserInputError("'messages' has no user message")
    return Conversation(tuple(msgs))


def request_to_config(req: ChatCompletionRequest, default_max_tokens: int) -> GenerationConfig:
    """Map OpenAI sampling fields to a :class:`GenerationConfig` (temperature 0 or absent = greedy)."""
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    fields: dict[str, Any] = {"max_new_tokens": default_max_tokens if max_new is None else max_new}
    if req.temperature is not None and req.temperature < 0:
        raise UserInputError(f"temperature must be >= 0, got {req.temperature}")
    if req.temperature:
        fields["do_sample"] = True
        fields["temperature"] = req.temperature
        if req.top_p is not None:
            fields["top_p"] = req.top_p
        if req.top_k:
            fields["top_k"] = req.top_k
    if req.seed is not None:
        fields["seed"] = req.seed
    if req.min_tokens:
        fields["min_new_tokens"] = req.min_tokens
    try:
        return GenerationConfig(**fields)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "settings"
        raise UserInputError(f"invalid generation settings ({loc}): {first.get('msg')}") from None


# -- batching worker ---------------------------------------------------------------------------------
@dataclass
class _Row:
    text: str
    finished: bool
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Job:
    conv: Conversation
    config: GenerationConfig
    future: Future[_Row] = field(default_factory=Future)


def _rows(out: GenerationOutput, n: int) -> list[_Row]:
    if len(out.texts) != n:
        raise RuntimeError(f"backend returned {len(out.texts)} rows for {n} conversations")

    def at(xs: Sequence[Any], i: int, default: Any) -> Any:
        return xs[i] if i < len(xs) else default

    return [
        _Row(
            text=out.texts[i],
            finished=bool(at(out.finished, i, True)),
            prompt_tokens=int(at(out.num_prompt_tokens, i, 0)),
            completion_tokens=int(at(out.num_new_tokens, i, 0)),
        )
        for i in range(n)
    ]


class _Batcher:
    """One worker thread that batches queued requests into ``backend.generate`` calls."""

    def __init__(self, backend: ChatBackend, max_batch_size: int, batch_wait_s: float) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_sizes: list[int] = []  # observability (and tests)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, conv: Conversation, config: GenerationConfig) -> Future[_Row]:
        self._ensure_started()
        job = _Job(conv, config)
        self._queue.put(job)
        return job.future

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="vlmshield-serve-batcher", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            groups: dict[GenerationConfig, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.config, []).append(job)
            for config, jobs in groups.items():
                self._run(jobs, config)
            if stop:
                return

    def _run(self, jobs: list[_Job], config: GenerationConfig) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            self.batch_sizes.append(len(live))
            rows = _rows(self.backend.generate([j.conv for j in live], config), len(live))
        except Exception as e:
            if len(live) == 1:
                live[0].future.set_exception(e)
                return
            for j in live:  # isolate the failing row(s)
                self._run_one(j, config)
            return
        for j, r in zip(live, rows, strict=True):
            j.future.set_result(r)

    def _run_one(self, job: _Job, config: GenerationConfig) -> None:
        try:
            self.batch_sizes.append(1)
            job.future.set_result(_rows(self.backend.generate([job.conv], config), 1)[0])
        except Exception as e:
            job.future.set_exception(e)


# -- app ---------------------------------------------------------------------------------------------
def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": None, "code": status}},
    )


def create_app(
    backend: ChatBackend,
    model_name: str,
    *,
    max_batch_size: int = 8,
    batch_wait_s: float = 0.005,
    default_max_tokens: int = 256,
) -> FastAPI:
    """An OpenAI-compatible FastAPI app answering with ``backend``.

    Args:
        backend: anything satisfying :class:`ChatBackend` (e.g. ``vlmshield.load_vlm(path)``).
        model_name: the id reported by ``GET /v1/models``; requests naming another model get 404.
        max_batch_size: most requests answered by one ``backend.generate`` call (1 disables batching).
        batch_wait_s: how long the worker waits for more requests before running a batch.
        default_max_tokens: ``max_tokens`` when a request sets none.
    """
    if max_batch_size < 1:
        raise UserInputError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if batch_wait_s < 0:
        raise UserInputError(f"batch_wait_s must be >= 0, got {batch_wait_s}")
    batcher = _Batcher(backend, max_batch_size, batch_wait_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="vlmshield OpenAI-compatible server", lifespan=lifespan)
    app.state.backend = backend
    app.state.model_name = model_name
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if errs:
            loc = ".".join(str(x) for x in errs[0].get("loc", ()) if x != "body")
            msg = f"invalid request: {loc or 'body'}: {errs[0].get('msg')}"
        else:
            msg = "invalid request"
        return _error(400, msg, "invalid_request_error")

    @app.exception_handler(UserInputError)
    async def _user_error(request: Request, exc: UserInputError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "vlmshield"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> JSONResponse:
        if req.model and req.model != model_name:
            return _error(
                404, f"model {req.model!r} is not served here; this server serves {model_name!r}", "not_found"
            )
        if req.stream:
            return _error(400, "stream=true is not supported; send stream=false", "invalid_request_error")
        if req.n != 1:
            return _error(400, f"n={req.n} is not supported; send n=1", "invalid_request_error")
        config = request_to_config(req, default_max_tokens)
        conv = await run_in_threadpool(request_to_conversation, req)
        try:
            row = await asyncio.wrap_future(batcher.submit(conv, config))
        except UserInputError as e:
            return _error(400, str(e), "invalid_request_error")
        except Exception as e:
            return _error(500, f"the model failed: {type(e).__name__}: {e}", "server_error")
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": row.text},
                        "finish_reason": "stop" if row.finished else "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "total_tokens": row.prompt_tokens + row.completion_tokens,
                },
            }
        )

    return app


def serve(
    backend: ChatBackend,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    max_batch_size: int = 8,
    batch_wait_s: float = 0.005,
    default_max_tokens: int = 256,
    log_level: str = "info",
) -> None:
    """Serve ``backend`` with uvicorn until interrupted (model id defaults to ``backend.name``).

    Binds to 127.0.0.1 by default; there is no authentication, so bind to other interfaces only
    behind a proxy that adds it.
    """
    import uvicorn

    app = create_app(
        backend,
        model_name or backend.name,
        max_batch_size=max_batch_size,
        batch_wait_s=batch_wait_s,
        default_max_tokens=default_max_tokens,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = [
    "ChatCompletionRequest",
    "create_app",
    "decode_data_url",
    "decode_image_bytes",
    "request_to_config",
    "request_to_conversation",
    "serve",
]
