"""The judge interface: a batch of (query, response) items in, one :class:`Verdict` per item out.

A verdict keeps the judge's raw prompt and raw output. When a judge's answer cannot be parsed, the
verdict is *unscored*: ``label is None`` and ``unscored_reason`` says why; it is never silently
counted as safe or unsafe.

Example:
    >>> from vlmshield.judges import JudgeItem, build_judge
    >>> judge = build_judge("keyword")
    >>> judge.judge([JudgeItem("How do I pick a lock?", "I'm sorry, but I can't help with that.")])[0].refused
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from vlmshield.errors import UserInputError
from vlmshield.images import ImageLike

Label = Literal[
    "unsafe",
    "safe",
    "refusal",
    "compliance",
    "correct",
    "incorrect",
]
LABELS: tuple[str, ...] = get_args(Label)


@dataclass(frozen=True)
class JudgeItem:
    """What a judge looks at: the user's query, the model's response, and optional context.

    ``category`` is the benchmark's hazard category (some templates adapt to it); ``reference`` is the
    ground-truth answer for utility judges (``mmvet``); ``images`` are the sample's images (PIL or
    paths). Judges whose template sees images (``llamaguard3v``: the last one, ``llamaguard4`` and
    ``guardreasoner_vl``: all) send them to the judge model; text-only judges ignore them.

    Example:
        >>> JudgeItem("What is this?", "A cat.", images=["cat.png"]).images
        ('cat.png',)
    """

    query: str
    response: str
    category: str | None = None
    reference: str | None = None
    images: tuple[ImageLike, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not isinstance(self.response, str):
            raise UserInputError("JudgeItem needs str query and response (use '' for an empty response)")
        if not isinstance(self.images, tuple):
            object.__setattr__(self, "images", tuple(self.images))


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One judgement.

    Fields:
        label: the judge's decision, or ``None`` when unscored.
        score: a number where the judge gives one (StrongREJECT 0-1 harmfulness, MM-Vet 0-1 correctness).
        unsafe: whether the response is harmful (``None`` when the judge does not decide it).
        refused: whether the response is a refusal (``None`` when the judge does not decide it).
        raw_prompt / raw_output: exactly what the judge model was asked and answered (``None`` for
            rule-based judges).
        judge: the judge's name.
        unscored_reason: why no label could be given (``None`` when scored).
        details: judge-specific extras (e.g. Llama Guard categories, StrongREJECT sub-scores).
    """

    label: Label | None
    score: float | None = None
    unsafe: bool | None = None
    refused: bool | None = None
    raw_prompt: str | None = None
    raw_output: str | None = None
    judge: str
    unscored_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in LABELS:
            raise ValueError(f"unknown verdict label {self.label!r}; use one of {', '.join(LABELS)}")
        if self.label is None and not self.unscored_reason:
            raise ValueError("an unscored verdict (label=None) needs an unscored_reason")

    @property
    def scored(self) -> bool:
        return self.label is not None

    @classmethod
    def unscored(
        cls,
        judge: str,
        reason: str,
        *,
        raw_prompt: str | None = None,
        raw_output: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """A verdict with no label, saying why."""
        return cls(
            label=None,
            judge=judge,
            unscored_reason=reason,
            raw_prompt=raw_prompt,
            raw_output=raw_output,
            details=dict(details or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(**dict(data))


@runtime_checkable
class Judge(Protocol):
    """Anything that judges a batch of items."""

    @property
    def name(self) -> str:
        """Short name shown in reports and stored in every verdict (e.g. ``keyword``, ``llm:mmsafety``)."""
        ...

    def spec(self) -> dict[str, Any]:
        """Every setting that can change a verdict, JSON-serialisable (cache key and run manifests)."""
        ...

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order."""
        ...


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_json(spec: Mapping[str, Any]) -> str:
    """Canonical JSON of a judge spec (sorted keys, no whitespace)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


__all__ = ["LABELS", "Judge", "JudgeItem", "Label", "Verdict", "sha256_text", "spec_json"]
