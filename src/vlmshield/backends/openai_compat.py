"""A :class:`~vlmshield.backends.ChatBackend` over any OpenAI-compatible ``/v1/chat/completions``.

Works with vLLM, SGLang, TGI, hosted APIs and :mod:`vlmshield.serve`. The public API is synchronous;
requests run on a thread pool of ``max_concurrency`` workers, one request per conversation.

- Base URL: ``base_url`` or env ``VLMSHIELD_OPENAI_BASE_URL`` / ``OPENAI_BASE_URL``. A URL without a
  path (``http://host:8000``) gets ``/v1`` appended; requests go to ``{base_url}/chat/completions``.
- API key: ``api_key`` or env ``VLMSHIELD_OPENAI_API_KEY`` / ``OPENAI_API_KEY`` (optional; sent as a
  bearer token, never printed).
- Images are sent as base64 PNG data URLs in ``image_url`` content parts, before the turn's text.
- Greedy decoding (``do_sample=False``) is ``temperature=0``; ``max_tokens``, ``top_p`` and ``seed``
  are passed through; ``top_k`` and ``min_tokens`` (vLLM / SGLang extensions) only when set.
- Rate limit: ``max_requests_per_s`` spaces the starts of requests (retries included) evenly, across
  the worker threads (:class:`~vlmshield.backends.ratelimit.RateLimiter`); unset, no limit.
- Retries: 429, 5xx, connection errors and timeouts are retried up to ``max_retries`` times with
  exponential backoff (``backoff_s * 2**attempt``), or after the server's ``Retry-After`` when it sends
  one (capped at :data:`MAX_RETRY_AFTER_S`). Other 4xx answers fail at once. Failures raise
  :class:`EndpointError` naming the URL, the status and what to check; a 200 answer that is not JSON or
  has no ``choices`` raises :class:`MalformedResponseError`.

Example:
    >>> from vlmshield.backends.openai_compat import OpenAIChatBackend
    >>> backend = OpenAIChatBackend("http://127.0.0.1:8000/v1", model="llava")  # doctest: +SKIP
    >>> backend.generate([Conversation.single("hi")]).texts  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import email.utils
import io
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from vlmshield.backends.ratelimit import RateLimiter
from vlmshield.conversation import Conversation
from vlmshield.errors import UserInputError, VlmshieldError
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput, timed
from vlmshield.images import ImageLike, as_pil

BASE_URL_ENV = ("VLMSHIELD_OPENAI_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("VLMSHIELD_OPENAI_API_KEY", "OPENAI_API_KEY")
MAX_RETRY_AFTER_S = 60.0


def is_retryable_status(status: int) -> bool:
    """408, 409, 429 and every 5xx except 501 (not implemented) are worth retrying."""
    return status in (408, 409, 429) or (status >= 500 and status != 501)


class EndpointError(VlmshieldError):
    """An OpenAI-compatible endpoint failed; the message names the URL, the status and what to check."""

    def __init__(self, message: str, *, url: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


class MalformedResponseError(EndpointError):
    """The endpoint answered 200 but the body is not an OpenAI chat completion."""


def _env(names: Sequence[str]) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def normalize_base_url(url: str) -> str:
    """Strip trailing slashes; append ``/v1`` when the URL has no path.

    Example:
        >>> normalize_base_url("http://127.0.0.1:8000")
        'http://127.0.0.1:8000/v1'
        >>> normalize_base_url("https://api.example.com/v1/")
        'https://api.example.com/v1'
    """
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserInputError(
            f"base URL {url!r} is not an http(s) URL; pass something like http://127.0.0.1:8000/v1"
        )
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def image_to_data_url(image: ImageLike) -> str:
    """Encode an image (PIL or path, loaded with the safety limits) as a base64 PNG data URL."""
    buf = io.BytesIO()
    as_pil(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def conversation_to_messages(conv: Conversation) -> list[dict[str, Any]]:
    """Map a :class:`Conversation` to OpenAI chat ``messages`` (images first, then text)."""
    out: list[dict[str, Any]] = []
    for m in conv.messages:
        if m.images:
            parts: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": image_to_data_url(im)}} for im in m.images
            ]
            parts.append({"type": "text", "text": m.text})
            out.append({"role": m.role, "content": parts})
        else:
            out.append({"role": m.role, "content": m.text})
    return out


def sampling_params(config: GenerationConfig) -> dict[str, Any]:
    """OpenAI request fields for a :class:`GenerationConfig` (greedy -> ``temperature=0``)."""
    params: dict[str, Any] = {"max_tokens": config.max_new_tokens}
    if config.do_sample:
        params["temperature"] = config.temperature
        params["top_p"] = config.top_p
        if config.top_k > 0:
            params["top_k"] = config.top_k
    else:
        params["temperature"] = 0.0
    if config.seed is not None:
        params["seed"] = config.seed
    if config.min_new_tokens > 0:
        params["min_tokens"] = config.min_new_tokens
    return params


def _retry_after_seconds(value: str | None) -> float | None:
    """Parse ``Retry-After`` (seconds, possibly fractional, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _snippet(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


@dataclass
class _Reply:
    text: str
    finished: bool
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class OpenAIChatBackend:
    """A synchronous, concurrency-limited client for OpenAI-compatible chat completions.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``; defaults to env ``VLMSHIELD_OPENAI_BASE_URL`` or
            ``OPENAI_BASE_URL``.
        model: the served model name (``GET {base_url}/models`` lists them). Required.
        api_key: defaults to env ``VLMSHIELD_OPENAI_API_KEY`` or ``OPENAI_API_KEY``; may be absent.
        max_concurrency: requests in flight at once.
        timeout_s: per-request timeout (connect, read, write).
        max_retries: retries after the first attempt for 429 / 5xx / connection errors / timeouts.
        backoff_s: first backoff; doubled after each retry.
        extra_body: extra JSON fields sent with every request (e.g. ``{"repetition_penalty": 1.1}``).
        max_requests_per_s: at most this many requests start per second (None: no limit).

    Example:
        >>> with OpenAIChatBackend("http://127.0.0.1:8000", model="m") as b:  # doctest: +SKIP
        ...     out = b.generate([Conversation.single("hi")], GenerationConfig(max_new_tokens=8))
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        extra_body: Mapping[str, Any] | None = None,
        max_requests_per_s: float | None = None,
    ) -> None:
        url = base_url or _env(BASE_URL_ENV)
        if not url:
            raise UserInputError(
                "no endpoint URL: pass base_url= or set VLMSHIELD_OPENAI_BASE_URL "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        if not model:
            raise UserInputError("no model name: pass model= (GET {base_url}/models lists the served ones)")
        if max_concurrency < 1:
            raise UserInputError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout_s <= 0:
            raise UserInputError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise UserInputError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0:
            raise UserInputError(f"backoff_s must be >= 0, got {backoff_s}")
        self.base_url = normalize_base_url(url)
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.extra_body = dict(extra_body or {})
        self._api_key = api_key or _env(API_KEY_ENV)
        self.max_requests_per_s = max_requests_per_s
        self._limiter = RateLimiter(max_requests_per_s) if max_requests_per_s is not None else None
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    # -- ChatBackend ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    def generate(
        self, conversations: Sequence[Conversation], config: GenerationConfig | None = None
    ) -> GenerationOutput:
        """Answer each conversation with one request; rows are in input order.

        Raises :class:`EndpointError` (or :class:`MalformedResponseError`) for the first failing row.
        """
        config = config or GenerationConfig()
        convs = list(conversations)
        cost = Cost()
        if not convs:
            return GenerationOutput([], [], [], [], [], cost)
        with timed(cost):
            bodies = [self._body(c, config) for c in convs]
            replies = self._run_all(bodies)
        cost.calls = sum(r.attempts for r in replies)
        cost.prompt_tokens = sum(r.prompt_tokens for r in replies)
        cost.new_tokens = sum(r.completion_tokens for r in replies)
        return GenerationOutput(
            texts=[r.text for r in replies],
            token_ids=[[] for _ in replies],
            num_new_tokens=[r.completion_tokens for r in replies],
            num_prompt_tokens=[r.prompt_tokens for r in replies],
            finished=[r.finished for r in replies],
            cost=cost,
        )

    def served_models(self) -> list[dict[str, Any]]:
        """``GET {base_url}/models``: the ``data`` entries (``id``, ``owned_by``, ...), one request, no
        retries; raises :class:`EndpointError` when the endpoint cannot be read."""
        url = self.base_url + "/models"
        try:
            resp = self._http().get(url)
        except httpx.HTTPError as e:
            raise EndpointError(
                f"{url}: could not connect ({type(e).__name__}: {e}); is the server running? check base_url",
                url=url,
            ) from None
        if resp.status_code != 200:
            raise self._status_error(resp, 1)
        try:
            data = resp.json().get("data")
        except (ValueError, AttributeError):
            data = None
        if not isinstance(data, list):
            raise MalformedResponseError(
                f"{url} answered 200 but not a model list: {_snippet(resp.text) or '(empty body)'}",
                url=url,
                status=200,
            )
        return [m for m in data if isinstance(m, dict)]

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> OpenAIChatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r})"

    # -- internals -------------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                headers = {"Content-Type": "application/json"}
                if self._api_key:
                    headers["Authorization"] = f"Bearer {self._api_key}"
                self._client = httpx.Client(
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(
                        max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                    ),
                )
            return self._client

    def _body(self, conv: Conversation, config: GenerationConfig) -> dict[str, Any]:
        if not conv.messages:
            raise UserInputError("a conversation has no messages; build it with Conversation.single(...)")
        return {
            **self.extra_body,
            "model": self.model,
            "messages": conversation_to_messages(conv),
            **sampling_params(config),
        }

    def _run_all(self, bodies: list[dict[str, Any]]) -> list[_Reply]:
        if len(bodies) == 1 or self.max_concurrency == 1:
            return [self._request(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(bodies))) as pool:
            futures: list[Future[_Reply]] = [pool.submit(self._request, b) for b in bodies]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _request(self, body: dict[str, Any]) -> _Reply:
        client = self._http()
        attempts = 0
        while True:
            attempts += 1
            retry_after: float | None = None
            if self._limiter is not None:
                self._limiter.wait()
            try:
                resp = client.post(self.url, json=body)
            except httpx.TimeoutException as e:
                if attempts > self.max_retries:
                    raise EndpointError(
                        f"{self.url}: no response within {self.timeout_s:g}s after {attempts} attempt(s) "
                        f"({type(e).__name__}); raise timeout_s, lower max_concurrency or check the server load",
                        url=self.url,
                        attempts=attempts,
                    ) from None
            except httpx.TransportError as e:
                if attempts > self.max_retries:
                    raise EndpointError(
                        f"{self.url}: could not connect after {attempts} attempt(s) ({type(e).__name__}: "
                        f"{e}); is the server running? check base_url",
                        url=self.url,
                        attempts=attempts,
                    ) from None
            else:
                if resp.status_code == 200:
                    return self._parse(resp, attempts)
                if not is_retryable_status(resp.status_code) or attempts > self.max_retries:
                    raise self._status_error(resp, attempts)
                retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
            if retry_after is not None:
                delay = min(retry_after, MAX_RETRY_AFTER_S)
            else:
                delay = self.backoff_s * (2 ** (attempts - 1))
            time.sleep(delay)

    def _status_error(self, resp: httpx.Response, attempts: int) -> EndpointError:
        status = resp.status_code
        detail = _server_message(resp)
        if status in (401, 403):
            hint = "check the API key (api_key= or VLMSHIELD_OPENAI_API_KEY / OPENAI_API_KEY)"
        elif status == 404:
            hint = (
                f"check base_url (it usually ends in /v1) and the model name {self.model!r} "
                f"(GET {self.base_url}/models lists the served models)"
            )
        elif status == 429:
            hint = f"rate limited after {attempts} attempt(s); lower max_concurrency or retry later"
        elif status >= 500:
            hint = f"server error after {attempts} attempt(s); check the server's logs"
        else:
            hint = "the server rejected the request; check the model name and generation settings"
        return EndpointError(
            f"{self.url} answered HTTP {status}: {detail or '(no message)'}; {hint}",
            url=self.url,
            status=status,
            attempts=attempts,
        )

    def _parse(self, resp: httpx.Response, attempts: int) -> _Reply:
        def bad(what: str) -> MalformedResponseError:
            return MalformedResponseError(
                f"{self.url} answered 200 but {what}: {_snippet(resp.text) or '(empty body)'}; "
                "is base_url an OpenAI-compatible /v1 endpoint?",
                url=self.url,
                status=resp.status_code,
                attempts=attempts,
            )

        try:
            data = resp.json()
        except ValueError:
            raise bad("the body is not JSON") from None
        if not isinstance(data, dict):
            raise bad("the body is not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise bad("it has no 'choices'")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise bad("choices[0] has no 'message'")
        content = message.get("content")
        if content is None:
            refusal = message.get("refusal")
            content = refusal if isinstance(refusal, str) else ""
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise bad("choices[0].message.content is not a string")
        raw_usage = data.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        return _Reply(
            text=content,
            finished=choices[0].get("finish_reason") != "length",
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            attempts=attempts,
        )


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _server_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return _snippet(resp.text)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return _snippet(err["message"])
        if isinstance(err, str):
            return _snippet(err)
        if isinstance(data.get("detail"), str):
            return _snippet(data["detail"])
        if isinstance(data.get("message"), str):
            return _snippet(data["message"])
    return _snippet(resp.text)


__all__ = [
    "EndpointError",
    "MalformedResponseError",
    "OpenAIChatBackend",
    "conversation_to_messages",
    "image_to_data_url",
    "normalize_base_url",
    "sampling_params",
]
