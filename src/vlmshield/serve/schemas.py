"""OpenAI chat-completions shapes: the request subset this server honours, and the response bodies.

Images must be inline ``data:image/...;base64,`` URLs; they are decoded with the limits of
:mod:`vlmshield.images` (at most :data:`~vlmshield.images.MAX_IMAGE_BYTES` bytes and
:data:`~vlmshield.images.MAX_IMAGE_PIXELS` pixels, decompression bombs refused). The server never
fetches remote URLs or reads local files.

vlmshield's own request options travel in one namespaced field, set with the client's ``extra_body``::

    client.chat.completions.create(model="M:coca", messages=[...],
        extra_body={"vlmshield": {"defense_params": {"alpha": 2.0}, "details": True}})

Example:
    >>> req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    >>> request_to_config(req, default_max_tokens=64).max_new_tokens
    8
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlmshield.conversation import Conversation, Message
from vlmshield.errors import ImageError, UserInputError
from vlmshield.generation import GenerationConfig
from vlmshield.images import MAX_IMAGE_BYTES, load_image_bytes

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,(.*)$", re.DOTALL)
_MAX_B64_CHARS = (MAX_IMAGE_BYTES // 3 + 1) * 4

Scalar = Annotated[str, Field(max_length=4096)] | bool | int | float


# -- images ----------------------------------------------------------------------------------------------
def decode_image_bytes(raw: bytes, what: str = "image") -> Image.Image:
    """Decode image bytes to RGB with the limits of :func:`vlmshield.images.load_image`."""
    return load_image_bytes(raw, what)


def decode_data_url(url: str, what: str = "image") -> Image.Image:
    """Decode a ``data:image/...;base64,...`` URL; anything else is refused (no fetching).

    Example:
        >>> decode_data_url("https://example.com/cat.png")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        vlmshield.errors.ImageError: ...
    """
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


# -- request ---------------------------------------------------------------------------------------------
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


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class VlmshieldOptions(BaseModel):
    """The ``vlmshield`` request field (sent with ``extra_body``).

    ``defense_params``: defense arguments for this request only, limited to the operator's allow-list.
    ``details``: return the defense's intermediates in the response's ``vlmshield`` field (only where
    the operator exposes them).
    """

    model_config = ConfigDict(extra="forbid")
    defense_params: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    details: bool = False


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
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    vlmshield: VlmshieldOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def count_images(req: ChatCompletionRequest) -> int:
    """Image parts in the request (counted before anything is decoded)."""
    return sum(
        1
        for m in req.messages
        if isinstance(m.content, list)
        for part in m.content
        if part.type == "image_url"
    )


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


def request_to_config(
    req: ChatCompletionRequest, default_max_tokens: int, max_new_tokens: int | None = None
) -> GenerationConfig:
    """Map OpenAI sampling fields to a :class:`GenerationConfig` (temperature 0 or absent = greedy).

    ``max_new_tokens`` is the server's cap on ``max_tokens``: a request over it is refused.
    """
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_new is not None and max_new_tokens is not None and max_new > max_new_tokens:
        raise UserInputError(
            f"max_tokens {max_new} exceeds this server's limit of {max_new_tokens}; ask for fewer tokens"
        )
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


# -- responses -------------------------------------------------------------------------------------------
def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    extension: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object (``extension`` goes in the ``vlmshield`` field)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_body(prompt_tokens, completion_tokens),
    }
    if extension is not None:
        body["vlmshield"] = extension
    return body


def chunk_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    include_usage: bool = False,
    usage: dict[str, int] | None = None,
    extension: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object; ``delta=None`` makes the usage-only last chunk (no choices)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if include_usage:
        body["usage"] = usage
    if extension is not None:
        body["vlmshield"] = extension
    return body


def models_body(ids: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_body(i, created) for i in ids]}


def model_body(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "vlmshield"}
