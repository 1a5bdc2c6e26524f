"""A remote OpenAI-compatible engine as the model under evaluation (``--model openai:...``).

``openai:MODEL`` names the served model ``MODEL`` on the endpoint given by ``base_url`` (``--base-url``,
else env ``VLMSHIELD_OPENAI_BASE_URL`` / ``OPENAI_BASE_URL``); ``openai:URL#MODEL`` carries the URL
itself (``openai:http://10.0.0.5:8000/v1#llava-hf/llava-1.5-7b-hf``). vLLM, SGLang, TGI, hosted APIs and
``vlmshield serve`` all work.

:class:`RemoteModel` is a :class:`~vlmshield.backends.ChatBackend` with no weights: defenses that only
generate (``none``, ``ecso``) run on it; white-box ones (CoCA's two-branch logits, CMRM's hidden-state
hooks) are refused before the run starts (:func:`vlmshield.eval.scale.check_remote_defenses`). Answers
carry no token ids (the API gives text); token counts come from the endpoint's ``usage``.

Example:
    >>> spec = parse_remote_model("openai:http://127.0.0.1:8000/v1#tiny")
    >>> spec.model, spec.base_url
    ('tiny', 'http://127.0.0.1:8000/v1')
    >>> with RemoteModel(spec) as m:  # doctest: +SKIP
    ...     m.generate([Conversation.single("hi")]).texts
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vlmshield.backends.openai_compat import BASE_URL_ENV, OpenAIChatBackend, _env, normalize_base_url
from vlmshield.conversation import Conversation
from vlmshield.errors import UserInputError, VlmshieldError
from vlmshield.generation import GenerationConfig, GenerationOutput

REMOTE_PREFIX = "openai:"


class RemoteModelSpec(BaseModel):
    """Where the evaluated model is served and how hard to call it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="the served model's name (GET /v1/models lists them)")
    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    max_concurrency: int = Field(16, ge=1, le=4096)
    max_requests_per_s: float | None = Field(None, gt=0)
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(4, ge=0, le=100)


def is_remote_model(name: str) -> bool:
    """``True`` for ``openai:...`` model names.

    Example:
        >>> is_remote_model("openai:tiny"), is_remote_model("ckpt/tiny")
        (True, False)
    """
    return name.startswith(REMOTE_PREFIX)


def parse_remote_model(name: str, base_url: str | None = None, **limits: Any) -> RemoteModelSpec:
    """``openai:MODEL`` (URL from ``base_url`` or the environment) or ``openai:URL#MODEL``.

    ``limits`` are :class:`RemoteModelSpec` fields (``max_concurrency``, ``max_requests_per_s``, ...).
    """
    if not is_remote_model(name):
        raise UserInputError(f"{name!r} is not a remote model; write openai:MODEL or openai:URL#MODEL")
    rest = name[len(REMOTE_PREFIX) :].strip()
    url: str | None
    if "#" in rest:
        url, _, model = rest.partition("#")
        if base_url and normalize_base_url(base_url) != normalize_base_url(url):
            raise UserInputError(f"{name} names its URL; drop --base-url {base_url} (or write openai:MODEL)")
    else:
        url, model = base_url or _env(BASE_URL_ENV), rest
    model = model.strip()
    if not model:
        raise UserInputError(f"{name!r} names no model; write openai:MODEL or openai:URL#MODEL")
    if not url:
        raise UserInputError(
            f"{name} needs an endpoint: pass --base-url URL, set VLMSHIELD_OPENAI_BASE_URL, or write "
            "openai:URL#MODEL"
        )
    return RemoteModelSpec(model=model, base_url=normalize_base_url(url), **limits)


class RemoteModel:
    """The evaluated model behind an OpenAI-compatible endpoint (see the module docstring).

    Args:
        spec: the endpoint, model name and request limits.

    Example:
        >>> m = RemoteModel(parse_remote_model("openai:tiny", "http://127.0.0.1:8000"))
        >>> m.name, m.device, m.is_remote
        ('openai:tiny', 'remote', True)
    """

    is_remote = True
    family: str | None = None
    dtype: str | None = None
    device = "remote"

    def __init__(self, spec: RemoteModelSpec) -> None:
        self.spec = spec
        self.client = OpenAIChatBackend(
            spec.base_url,
            spec.model,
            max_concurrency=spec.max_concurrency,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            max_requests_per_s=spec.max_requests_per_s,
        )

    @property
    def name(self) -> str:
        return REMOTE_PREFIX + self.spec.model

    @property
    def endpoint(self) -> str:
        return self.spec.base_url

    def generate(
        self, conversations: Sequence[Conversation], config: GenerationConfig | None = None
    ) -> GenerationOutput:
        """One request per conversation (``max_concurrency`` in flight); rows in input order."""
        return self.client.generate(conversations, config)

    def served(self) -> dict[str, Any]:
        """What ``GET /models`` says about this model (for the manifest); refuses, on one line, a model
        name the endpoint does not serve. An endpoint without the route is not an error."""
        try:
            models = self.client.served_models()
        except VlmshieldError as e:
            if getattr(e, "status", None) in (404, 405):
                return {}
            raise
        for m in models:
            if m.get("id") == self.spec.model:
                return {k: m[k] for k in ("id", "owned_by", "root", "max_model_len") if k in m}
        ids = ", ".join(str(m.get("id")) for m in models[:8]) or "none"
        raise UserInputError(
            f"{self.spec.base_url} does not serve a model named {self.spec.model!r} (served: {ids}); "
            "write openai:<one of those>"
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["REMOTE_PREFIX", "RemoteModel", "RemoteModelSpec", "is_remote_model", "parse_remote_model"]
