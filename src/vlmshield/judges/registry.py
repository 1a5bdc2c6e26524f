"""The judge registry and :func:`build_judge` for ``name:key=value,...`` specs.

Specs:
    ``keyword`` / ``keyword:window=0``
    ``llm:template=mmsafety,backend=openai,model=gpt-4o-mini`` (endpoint from ``base_url=`` or env
    ``VLMSHIELD_OPENAI_BASE_URL`` / ``OPENAI_BASE_URL``)
    ``llm:template=llamaguard3,model=PATH`` (``backend=local`` is the default: ``vlmshield.load_vlm(PATH)``)

Every judge also takes ``cache=PATH`` (wraps it in a :class:`~vlmshield.judges.cache.CachedJudge`).
Values cannot contain ``,``; unknown names and keys get "did you mean" errors.

Example:
    >>> from vlmshield.judges.registry import build_judge, parse_spec
    >>> parse_spec("llm:template=vlsafe,model=m")
    ('llm', {'template': 'vlsafe', 'model': 'm'})
    >>> build_judge("keyword").name
    'keyword'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vlmshield.backends.base import ChatBackend
from vlmshield.errors import UnknownNameError, UserInputError
from vlmshield.judges.base import Judge
from vlmshield.judges.cache import CachedJudge
from vlmshield.judges.keyword import KeywordJudge
from vlmshield.judges.llm import LLMJudge, get_template
from vlmshield.judges.templates import TEMPLATES
from vlmshield.registry import Registry, suggest

#: ``(backend kind, model, options) -> ChatBackend``; kind is ``local`` or ``openai``.
BackendFactory = Callable[[str, str, Mapping[str, str]], ChatBackend]
#: ``(options, backend_factory) -> Judge``
JudgeFactory = Callable[[dict[str, str], BackendFactory], Judge]

BACKEND_KINDS = ("local", "openai")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``name:key=value,...`` into the name and its options."""
    spec = spec.strip()
    if not spec:
        raise UserInputError("empty judge spec; use e.g. 'keyword' or 'llm:template=mmsafety,model=PATH'")
    name, _, rest = spec.partition(":")
    name = name.strip()
    options: dict[str, str] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key:
                raise UserInputError(
                    f"judge spec {spec!r}: {part.strip()!r} is not key=value (values cannot contain ',')"
                )
            if key in options:
                raise UserInputError(f"judge spec {spec!r}: {key!r} is given twice")
            options[key] = value
    return name, options


def _check_keys(judge: str, options: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for key in options:
        if key not in allowed:
            raise UserInputError(
                f"judge {judge!r} has no option {key!r}{suggest(key, list(allowed))} (options: {', '.join(allowed)})"
            )


def _int(judge: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserInputError(f"judge {judge!r}: {key}={value!r} is not an integer") from None


def _float(judge: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserInputError(f"judge {judge!r}: {key}={value!r} is not a number") from None


def _bool(judge: str, key: str, value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise UserInputError(f"judge {judge!r}: {key}={value!r} is not true/false")


def default_backend_factory(kind: str, model: str, options: Mapping[str, str]) -> ChatBackend:
    """``local``: ``vlmshield.load_vlm(model)``; ``openai``: :class:`OpenAIChatBackend` (env for URL / key)."""
    if kind == "openai":
        from vlmshield.backends.openai_compat import OpenAIChatBackend

        kwargs: dict[str, Any] = {}
        if "concurrency" in options:
            kwargs["max_concurrency"] = _int("llm", "concurrency", options["concurrency"])
        if "timeout_s" in options:
            kwargs["timeout_s"] = _float("llm", "timeout_s", options["timeout_s"])
        return OpenAIChatBackend(options.get("base_url") or None, model=model, **kwargs)
    if kind == "local":
        from vlmshield import load_vlm

        backend: ChatBackend = load_vlm(model)
        return backend
    raise UnknownNameError(
        f"unknown judge backend {kind!r}{suggest(kind, list(BACKEND_KINDS))} (known: local, openai)"
    )


def _keyword(options: dict[str, str], backend_factory: BackendFactory) -> Judge:
    _check_keys("keyword", options, ("window",))
    if "window" in options:
        return KeywordJudge(window=_int("keyword", "window", options["window"]))
    return KeywordJudge()


_LLM_KEYS = (
    "template",
    "backend",
    "model",
    "base_url",
    "concurrency",
    "timeout_s",
    "max_new_tokens",
    "batch_size",
    "max_response_chars",
    "native",
    "threshold",
)


def _llm(options: dict[str, str], backend_factory: BackendFactory) -> Judge:
    _check_keys("llm", options, _LLM_KEYS)
    if not options.get("template"):
        raise UserInputError(
            "the llm judge needs template=NAME, e.g. 'llm:template=mmsafety,model=PATH' "
            f"(templates: {', '.join(sorted(TEMPLATES))})"
        )
    template = get_template(options["template"])
    kind = options.get("backend", "local")
    if kind not in BACKEND_KINDS:
        raise UnknownNameError(
            f"unknown judge backend {kind!r}{suggest(kind, list(BACKEND_KINDS))} (known: local, openai)"
        )
    model = options.get("model")
    if not model:
        raise UserInputError(
            f"the llm judge needs model=...: a local checkpoint path (backend=local) or the served model name "
            f"(backend=openai), e.g. 'llm:template={template.name},model=PATH'"
        )
    if kind == "local":
        for key in ("base_url", "concurrency", "timeout_s"):
            if key in options:
                raise UserInputError(f"judge option {key}= applies to backend=openai only")
    kwargs: dict[str, Any] = {}
    for key in ("max_new_tokens", "batch_size", "max_response_chars"):
        if key in options:
            kwargs[key] = _int("llm", key, options[key])
    if "native" in options:
        kwargs["native"] = _bool("llm", "native", options["native"])
    if "threshold" in options:
        kwargs["threshold"] = _float("llm", "threshold", options["threshold"])
    backend_opts: dict[str, str] = {
        k: options[k] for k in ("base_url", "concurrency", "timeout_s") if k in options
    }
    backend = backend_factory(kind, model, backend_opts)
    return LLMJudge(backend, template, **kwargs)


_OMNISAFEBENCH_KEYS = (
    "backend",
    "model",
    "base_url",
    "concurrency",
    "timeout_s",
    "final",
    "threshold",
    "max_new_tokens",
    "batch_size",
    "max_response_chars",
)


def _omnisafebench(options: dict[str, str], backend_factory: BackendFactory) -> Judge:
    """``omnisafebench:model=M[,backend=openai][,final=llm|rule][,threshold=3]``."""
    from vlmshield.judges.omnisafebench import OmniSafeBenchJudge

    _check_keys("omnisafebench", options, _OMNISAFEBENCH_KEYS)
    kind = options.get("backend", "local")
    if kind not in BACKEND_KINDS:
        raise UnknownNameError(
            f"unknown judge backend {kind!r}{suggest(kind, list(BACKEND_KINDS))} (known: local, openai)"
        )
    model = options.get("model")
    if not model:
        raise UserInputError(
            "the omnisafebench judge needs model=... (a checkpoint path or a served model name)"
        )
    kwargs: dict[str, Any] = {}
    for key in ("threshold", "max_new_tokens", "batch_size", "max_response_chars"):
        if key in options:
            kwargs[key] = _int("omnisafebench", key, options[key])
    if "final" in options:
        kwargs["final"] = options["final"]
    backend_opts: dict[str, str] = {
        k: options[k] for k in ("base_url", "concurrency", "timeout_s") if k in options
    }
    if kind == "local" and backend_opts:
        raise UserInputError(f"judge option {next(iter(backend_opts))}= applies to backend=openai only")
    return OmniSafeBenchJudge(backend_factory(kind, model, backend_opts), **kwargs)


JUDGES: Registry[JudgeFactory] = Registry("judge")
JUDGES.register("keyword", _keyword)
JUDGES.register("llm", _llm)
JUDGES.register("omnisafebench", _omnisafebench)


def build_judge(spec: str, backend_factory: BackendFactory = default_backend_factory) -> Judge:
    """Build a judge from ``name:key=value,...`` (see the module docstring).

    Args:
        spec: e.g. ``keyword`` or ``llm:template=mmsafety,backend=openai,model=gpt-4o-mini``.
        backend_factory: builds the judge model for ``llm``; the default loads local checkpoints with
            ``vlmshield.load_vlm`` and endpoints with :class:`OpenAIChatBackend`.
    """
    name, options = parse_spec(spec)
    factory = JUDGES.get(name)
    cache = options.pop("cache", None)
    judge = factory(options, backend_factory)
    if cache:
        return CachedJudge(judge, cache)
    return judge


__all__ = [
    "BACKEND_KINDS",
    "JUDGES",
    "BackendFactory",
    "build_judge",
    "default_backend_factory",
    "parse_spec",
]
