"""Validated configuration of the server: limits, batching, keys, and the defended deployments.

Example:
    >>> from vlmshield.serve.settings import ServeSettings, parse_deployment
    >>> ServeSettings(max_batch_size=16).max_queue
    64
    >>> d = parse_deployment("strict=coca:alpha=4")
    >>> (d.name, d.defense)
    ('strict', 'coca:alpha=4')
    >>> parse_deployment("coca:alpha=1").name
    'coca'
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from vlmshield.errors import UserInputError

#: Environment variable holding API keys (one, or several separated by commas or whitespace).
API_KEY_ENV = "VLMSHIELD_API_KEY"
#: Shortest API key accepted: shorter keys are guessable.
MIN_KEY_LENGTH = 16
#: Defense arguments a client may never set per request, whatever the allow-list says: they reach the
#: server's file system or the network (``*_file`` arguments are refused too).
DENIED_PARAMS = frozenset({"vectors", "backend", "base_url", "model", "api_key"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ServeSettings(BaseModel):
    """Every limit and switch of the server, with safe defaults.

    Example:
        >>> ServeSettings(max_new_tokens=512, default_max_tokens=128).request_timeout_s
        300.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(8, ge=1, le=256, description="most requests answered by one generate call")
    batch_wait_s: float = Field(
        0.005, ge=0.0, le=1.0, description="how long a new batch waits for company before it runs"
    )
    max_queue: int = Field(64, ge=1, le=100_000, description="requests waiting for a batch; beyond: 429")
    request_timeout_s: float = Field(300.0, gt=0.0, le=86_400.0, description="queue wait + generation")
    max_images: int = Field(4, ge=0, le=64, description="images per request")
    max_messages: int = Field(64, ge=1, le=10_000, description="messages per request")
    max_prompt_tokens: int = Field(4096, ge=1, description="prompt tokens per request, image tokens included")
    max_new_tokens: int = Field(1024, ge=1, le=32_768, description="highest max_tokens a request may ask")
    default_max_tokens: int = Field(256, ge=1, le=32_768, description="max_tokens when a request sets none")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="request body size limit")
    expose_details: bool = Field(False, description="let clients ask for the defense's intermediates")
    api_keys: tuple[SecretStr, ...] = Field((), description="bearer tokens; empty: no authentication")
    drain_timeout_s: float | None = Field(
        None, gt=0.0, description="graceful shutdown budget; None: request_timeout_s + 10 s"
    )
    stream_keepalive_s: float = Field(15.0, gt=0.0, description="SSE comment while a stream waits")
    access_log: bool = True

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for k in v:
            key = k.get_secret_value()
            if len(key) < MIN_KEY_LENGTH or any(ch.isspace() for ch in key):
                raise ValueError(
                    f"an API key is shorter than {MIN_KEY_LENGTH} characters or holds whitespace; "
                    "use long random keys (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
        return v

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        if self.default_max_tokens > self.max_new_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_new_tokens ({self.max_new_tokens})"
            )
        return self

    @property
    def graceful_timeout_s(self) -> float:
        """How long shutdown waits for accepted requests before cancelling them."""
        return self.drain_timeout_s if self.drain_timeout_s is not None else self.request_timeout_s + 10.0

    def key_bytes(self) -> list[bytes]:
        """The keys as bytes, for constant-time comparison."""
        return [k.get_secret_value().encode() for k in self.api_keys]


class DeploymentSpec(BaseModel):
    """One defended model id: ``<served model>:<name>`` answered with ``defense``.

    ``allow_params`` are the defense arguments a client may set per request (``extra_body``).

    Example:
        >>> DeploymentSpec(name="coca", defense="coca:alpha=1", allow_params=("alpha",)).allow_params
        ('alpha',)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    defense: str
    allow_params: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"deployment name {v!r} must be letters, digits, '.', '_' or '-' (at most 64)")
        return v

    @field_validator("allow_params")
    @classmethod
    def _params(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for key in v:
            if key in DENIED_PARAMS or key.endswith("_file"):
                raise ValueError(
                    f"parameter {key!r} reaches the server's files or network and cannot be set by clients"
                )
        return v


def validated(cls: type[Any], what: str, **fields: Any) -> Any:
    """``cls(**fields)`` with validation errors turned into one :class:`UserInputError` line."""
    try:
        return cls(**fields)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or what
            parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
        raise UserInputError(f"invalid {what}: " + "; ".join(parts)) from None


def parse_deployment(text: str, allow_params: Sequence[str] = ()) -> DeploymentSpec:
    """``[NAME=]SPEC`` -> :class:`DeploymentSpec`; NAME defaults to the defense's name.

    A leading ``NAME=`` is recognised when the text before the first ``=`` holds no ``:`` (so
    ``coca:alpha=1`` is a spec, ``strict=coca:alpha=4`` a named one).
    """
    text = text.strip()
    name, eq, rest = text.partition("=")
    if eq and ":" not in name and not name.startswith("@"):
        spec = rest.strip()
        name = name.strip()
    else:
        spec = text
        name = ""
    if not spec:
        raise UserInputError(f"empty defense spec in {text!r}; use e.g. --defense coca:alpha=1")
    if not name:
        name = Path(spec[1:]).stem if spec.startswith("@") else spec.partition(":")[0].strip()
    return validated(
        DeploymentSpec, f"--defense {text!r}", name=name, defense=spec, allow_params=tuple(allow_params)
    )


def parse_allow_params(items: Sequence[str]) -> dict[str, list[str]]:
    """``NAME.KEY`` items (``--allow-param coca.alpha``) -> ``{NAME: [KEY, ...]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, dot, key = item.strip().rpartition(".")
        if not dot or not name or not key:
            raise UserInputError(f"--allow-param {item!r}: write NAME.KEY, e.g. coca.alpha")
        out.setdefault(name, []).append(key)
    return out


def load_api_keys(path: str | os.PathLike[str] | None, env: str | None = None) -> tuple[str, ...]:
    """Keys from a file (one per line; blank lines and ``#`` comments skipped) and the environment.

    ``env`` defaults to the value of ``$VLMSHIELD_API_KEY``. Keys are never printed.
    """
    keys: list[str] = []
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserInputError(f"API key file not found: {p}")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserInputError(f"cannot read the API key file {p} ({type(e).__name__})") from None
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not keys:
            raise UserInputError(f"the API key file {p} holds no key; put one key per line")
    value = os.environ.get(API_KEY_ENV) if env is None else env
    if value:
        keys += [k for k in re.split(r"[\s,]+", value) if k]
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, has_keys: bool, insecure: bool) -> None:
    """Refuse to listen beyond loopback without API keys, unless ``insecure``."""
    if not has_keys and not insecure and not is_loopback(host):
        raise UserInputError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use the model; "
            f"give --api-key-file PATH (or set ${API_KEY_ENV}), bind to 127.0.0.1, or pass --insecure"
        )
