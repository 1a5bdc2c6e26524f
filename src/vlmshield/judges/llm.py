"""LLM judges: a template (see :mod:`vlmshield.judges.templates`) on any :class:`ChatBackend`.

The judge model runs greedy with a short ``max_new_tokens``; items are batched through
``backend.generate``. Each verdict keeps the exact prompt and the raw answer; an answer the parser
cannot read gives an unscored verdict (``label=None``, ``unscored_reason`` set). Backend failures
(e.g. an unreachable endpoint) raise: they are not verdicts.

Example:
    >>> from vlmshield.backends.openai_compat import OpenAIChatBackend
    >>> judge = LLMJudge(OpenAIChatBackend(model="gpt-4o-mini"), "mmsafety")  # doctest: +SKIP
    >>> judge.judge([JudgeItem("How do I make a bomb?", "I can't help with that.")])[0].label  # doctest: +SKIP
    'safe'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vlmshield.backends.base import ChatBackend
from vlmshield.conversation import Conversation, Message
from vlmshield.errors import UnknownNameError, UserInputError
from vlmshield.generation import GenerationConfig
from vlmshield.judges import templates_mm as _templates_mm  # noqa: F401  (registers guard/HarmBench templates)
from vlmshield.judges.base import JudgeItem, Verdict
from vlmshield.judges.templates import TEMPLATES, JudgeTemplate, Unparsable
from vlmshield.registry import suggest


def get_template(name: str) -> JudgeTemplate:
    """Look up a template by name, with a did-you-mean error."""
    try:
        return TEMPLATES[name]
    except KeyError:
        known = sorted(TEMPLATES)
        raise UnknownNameError(
            f"unknown judge template {name!r}{suggest(name, known)} (known: {', '.join(known)})"
        ) from None


class LLMJudge:
    """Judge with a language model.

    Args:
        backend: the judge model (a local ``vlmshield.load_vlm(...)`` or an :class:`OpenAIChatBackend`).
        template: a template name (``mmsafety``, ``vlsafe``, ``llamaguard3``, ``strongreject``, ``mmvet``)
            or a :class:`JudgeTemplate`.
        max_new_tokens: judge answer budget (default: the template's, 4-48 tokens).
        batch_size: items per ``backend.generate`` call.
        max_response_chars: responses longer than this are truncated in the prompt (0 = never).
        native: Llama Guard templates only (``llamaguard3``, ``llamaguard3v``, ``llamaguard4``).
            ``False`` (default) sends the full task prompt as one user turn, for any
            instruction-following model. ``True`` sends the conversation itself (user query with the
            template's images, assistant response) for a real Llama Guard, whose chat template builds
            the task prompt.

    Images: templates with ``images`` other than ``none`` send the item's images with the prompt
    (``llamaguard3v`` the last one, ``llamaguard4`` and ``guardreasoner_vl`` all); text-only templates
    ignore them, so their verdicts (and cache keys) do not depend on the images.
        threshold: ``strongreject`` only: ``unsafe`` when the score is at least this (default 0.5).
    """

    def __init__(
        self,
        backend: ChatBackend,
        template: str | JudgeTemplate = "mmsafety",
        *,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        max_response_chars: int = 4000,
        native: bool = False,
        threshold: float = 0.5,
    ) -> None:
        self.backend = backend
        self.template = get_template(template) if isinstance(template, str) else template
        t = self.template
        if native and "native" not in t.options:
            raise UserInputError(
                f"judge template {t.name!r} has no native mode; drop native= (Llama Guard templates only)"
            )
        if threshold != 0.5 and "threshold" not in t.options:
            raise UserInputError(
                f"judge template {t.name!r} takes no threshold; drop threshold= (strongreject only)"
            )
        if not 0.0 <= threshold <= 1.0:
            raise UserInputError(f"threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        if max_response_chars < 0:
            raise UserInputError(f"max_response_chars must be >= 0 (0 = no limit), got {max_response_chars}")
        self.max_new_tokens = max_new_tokens or t.max_new_tokens
        self.config = GenerationConfig(max_new_tokens=self.max_new_tokens)  # greedy
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        self.native = native
        self.threshold = threshold

    @property
    def name(self) -> str:
        return f"llm:{self.template.name}"

    def spec(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "judge": "llm",
            "template": self.template.name,
            "template_sha256": self.template.sha256,
            "parser_version": self.template.parser_version,
            "backend": self.backend.name,
            "max_new_tokens": self.max_new_tokens,
            "max_response_chars": self.max_response_chars,
            "greedy": True,
        }
        if "native" in self.template.options:
            s["native"] = self.native
        if "threshold" in self.template.options:
            s["threshold"] = self.threshold
        if self.template.images != "none":
            s["sees_images"] = self.template.images
        return s

    # -- prompts ---------------------------------------------------------------------------------------
    def conversation(self, item: JudgeItem) -> tuple[Conversation, str]:
        """The judge conversation for ``item`` and its raw prompt as recorded in the verdict."""
        images = self.template.select_images(item.images)
        if self.native:
            response = item.response
            if self.max_response_chars and len(response) > self.max_response_chars:
                response = response[: self.max_response_chars] + " [truncated]"
            conv = Conversation((Message("user", item.query, tuple(images)), Message("assistant", response)))
            turns = [{"role": m.role, "content": m.text} for m in conv.messages]
            if images:
                turns[0]["images"] = len(images)  # type: ignore[assignment]
            return conv, json.dumps(turns, ensure_ascii=False)
        prompt = self.template.render(item, self.max_response_chars)
        conv = Conversation.single(prompt, images=images, system=self.template.system)
        if self.template.system is None and not images:
            return conv, prompt
        raw = {"system": self.template.system, "images": len(images), "user": prompt}
        return conv, json.dumps(raw, ensure_ascii=False)

    # -- judging ---------------------------------------------------------------------------------------
    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        todo: list[tuple[int, Conversation, str]] = []
        for i, item in enumerate(items):
            if self.template.needs_reference and not (item.reference and item.reference.strip()):
                verdicts[i] = Verdict.unscored(
                    self.name, f"the {self.template.name} judge needs a reference answer; this item has none"
                )
                continue
            conv, raw = self.conversation(item)
            todo.append((i, conv, raw))
        options = {"threshold": self.threshold}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            out = self.backend.generate([c for _, c, _ in chunk], self.config)
            if len(out.texts) != len(chunk):
                raise RuntimeError(
                    f"judge backend {self.backend.name} returned {len(out.texts)} answers for {len(chunk)} prompts"
                )
            for (i, _, raw), text in zip(chunk, out.texts, strict=True):
                verdicts[i] = self._verdict(raw, text, options)
        assert all(v is not None for v in verdicts)
        return [v for v in verdicts if v is not None]

    def _verdict(self, raw_prompt: str, output: str, options: dict[str, Any]) -> Verdict:
        try:
            p = self.template.parse(output, options)
        except Unparsable as e:
            return Verdict.unscored(self.name, str(e), raw_prompt=raw_prompt, raw_output=output)
        return Verdict(
            label=p.label,
            score=p.score,
            unsafe=p.unsafe,
            refused=p.refused,
            raw_prompt=raw_prompt,
            raw_output=output,
            judge=self.name,
            details=dict(p.details),
        )


__all__ = ["LLMJudge", "get_template"]
