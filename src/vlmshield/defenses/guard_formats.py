"""How each guard model is asked and how its answer is read, for the ``guard`` defense.

A :class:`GuardFormat` turns one row (query, images, and for the output stage the answer) into the
guard conversation(s) and reads the guard's answer(s) into a :class:`GuardDecision`. Prompt texts and
parsers live in :mod:`vlmshield.judges.guard_prompts` (shared with the guard judges), each quoted
from its model card or reference code.

| format | model card | stages | images |
|---|---|---|---|
| ``llamaguard3v`` | meta-llama/Llama-Guard-3-11B-Vision | input (``User``), output (``Agent``) | the last one |
| ``llamaguard4`` | meta-llama/Llama-Guard-4-12B | input, output | all |
| ``guardreasoner_vl`` | yueliu1999/GuardReasoner-VL-7B | input (``Request:``), output (``Response:``) | all |
| ``llavaguard`` | AIML-TUDA/LlavaGuard-v1.2-*-OV-hf | input: each image rated alone | each, one call per image |
| ``shieldgemma2`` | google/shieldgemma-2-4b-it | input: each (image, policy) | each, one call per policy |

``native``: a real Llama Guard or ShieldGemma 2 checkpoint builds its task prompt in its own chat
template from the raw content; then the guard gets the conversation itself (Llama Guard: user turn with
the image(s), plus the assistant's answer for the output stage; ShieldGemma 2: the image and the
policy text). Otherwise (any other checkpoint, e.g. the tiny test models) the task prompt is rendered
here and sent as the user turn.

Example:
    >>> fmt = get_format("llamaguard3v")
    >>> [c.last_user_text[:5] for c in fmt.requests("q", [], None, native=False)]
    ['Task:']
    >>> fmt.decide(["unsafe\\nS9"], "input").categories
    ['S9']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmshield.conversation import Conversation, Message
from vlmshield.errors import UnknownNameError, UserInputError
from vlmshield.images import ImageLike
from vlmshield.judges import guard_prompts as G
from vlmshield.judges.templates import Unparsable
from vlmshield.registry import suggest

Stage = Literal["input", "output"]


@dataclass
class GuardDecision:
    """What the guard said about one row at one stage.

    ``flagged`` is ``None`` when the answer could not be read (``reason`` says why); ``score`` is a
    probability where the guard gives one (ShieldGemma 2's largest P(Yes)).
    """

    flagged: bool | None
    categories: list[str] = field(default_factory=list)
    category_names: list[str] = field(default_factory=list)
    score: float | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardFormat:
    """One guard's prompt format (see the module table). Subclasses implement the two methods."""

    name: str
    source: str
    stages: tuple[Stage, ...]
    max_new_tokens: int
    needs_image: bool = False
    native_marker: str | None = None

    def requests(
        self,
        query: str,
        images: Sequence[ImageLike],
        response: str | None,
        *,
        native: bool,
        options: Mapping[str, Any] | None = None,
    ) -> list[Conversation]:
        """The guard conversation(s) for one row; ``response is None`` at the input stage."""
        raise NotImplementedError

    def decide(
        self, outputs: Sequence[str], stage: Stage, options: Mapping[str, Any] | None = None
    ) -> GuardDecision:
        """Read the guard's answer(s) to :meth:`requests` (in the same order)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LlamaGuardFormat(GuardFormat):
    """Llama Guard 3 Vision (``images="last"``) and Llama Guard 4 (``images="all"``)."""

    images: Literal["last", "all"] = "last"
    categories: Mapping[str, str] = field(default_factory=dict)
    prompt_categories: tuple[str, ...] = ()

    def requests(
        self,
        query: str,
        images: Sequence[ImageLike],
        response: str | None,
        *,
        native: bool,
        options: Mapping[str, Any] | None = None,
    ) -> list[Conversation]:
        imgs = tuple(images[-1:] if self.images == "last" else images)
        if native:
            msgs = [Message("user", query, imgs)]
            if response is not None:
                msgs.append(Message("assistant", response))
            return [Conversation(tuple(msgs))]
        exclude = set((options or {}).get("exclude", ()))
        include = [c for c in (self.prompt_categories or tuple(self.categories)) if c not in exclude]
        prompt = G.llama_guard_prompt(query, response, self.categories, include=include)
        return [Conversation.single(prompt, images=imgs)]

    def decide(
        self, outputs: Sequence[str], stage: Stage, options: Mapping[str, Any] | None = None
    ) -> GuardDecision:
        try:
            answer = G.parse_llama_guard(outputs[0], self.categories)
        except Unparsable as e:
            return GuardDecision(None, reason=str(e))
        exclude = set((options or {}).get("exclude", ()))
        codes = [c for c in answer.categories if c not in exclude]
        # llama-stack: a verdict whose categories are all excluded is not a violation
        flagged = answer.unsafe and (bool(codes) or not answer.categories)
        names = [self.categories[c].rstrip(".") for c in codes]
        return GuardDecision(flagged, codes, names)


@dataclass(frozen=True)
class GuardReasonerFormat(GuardFormat):
    """GuardReasoner-VL: the instruction as system turn, all images, ``Request:`` / ``Response:`` labels."""

    def requests(
        self,
        query: str,
        images: Sequence[ImageLike],
        response: str | None,
        *,
        native: bool,
        options: Mapping[str, Any] | None = None,
    ) -> list[Conversation]:
        text = G.GUARDREASONER_VL_INPUT.format(query=query, response="None" if response is None else response)
        return [Conversation.single(text, images=images, system=G.GUARDREASONER_VL_INSTRUCTION)]

    def decide(
        self, outputs: Sequence[str], stage: Stage, options: Mapping[str, Any] | None = None
    ) -> GuardDecision:
        try:
            answer = G.parse_guardreasoner(outputs[0])
        except Unparsable as e:
            return GuardDecision(None, reason=str(e))
        label = answer.request if stage == "input" else answer.response
        extra = {"request": answer.request, "response": answer.response}
        if label is None:
            key = "Request" if stage == "input" else "Response"
            return GuardDecision(
                None, reason=f"no '{key}: harmful|unharmful' in the guard's answer", extra=extra
            )
        flagged = label == "harmful"
        return GuardDecision(flagged, ["harmful"] if flagged else [], extra=extra)


@dataclass(frozen=True)
class LlavaGuardFormat(GuardFormat):
    """LlavaGuard: the policy prompt with one image per call; flagged when any image is rated Unsafe."""

    def requests(
        self,
        query: str,
        images: Sequence[ImageLike],
        response: str | None,
        *,
        native: bool,
        options: Mapping[str, Any] | None = None,
    ) -> list[Conversation]:
        return [Conversation.single(G.LLAVAGUARD_POLICY, images=[im]) for im in images]

    def decide(
        self, outputs: Sequence[str], stage: Stage, options: Mapping[str, Any] | None = None
    ) -> GuardDecision:
        flagged, cats, rationales = False, [], []
        for text in outputs:
            try:
                answer = G.parse_llavaguard(text)
            except Unparsable as e:
                return GuardDecision(None, reason=str(e))
            if answer.unsafe:
                flagged = True
                if answer.category and answer.category not in cats:
                    cats.append(answer.category)
            rationales.append(answer.rationale)
        codes = [c.split(":")[0].strip() for c in cats]
        names = [c.split(":", 1)[1].strip() if ":" in c else c for c in cats]
        return GuardDecision(flagged, codes, names, extra={"rationales": rationales})


@dataclass(frozen=True)
class ShieldGemma2Format(GuardFormat):
    """ShieldGemma 2: one call per (image, policy); flagged when a policy's P(Yes) exceeds the threshold.

    Local guards are scored from the first-step logits (:meth:`decide_probabilities`); over an endpoint
    the answer's first word is read (P(Yes) is then 1 or 0).
    """

    def policy_names(self, options: Mapping[str, Any] | None) -> list[str]:
        names = list((options or {}).get("policies") or G.SHIELDGEMMA2_POLICIES)
        unknown = [n for n in names if n not in G.SHIELDGEMMA2_POLICIES]
        if unknown:
            known = list(G.SHIELDGEMMA2_POLICIES)
            raise UnknownNameError(
                f"unknown ShieldGemma 2 policy {unknown[0]!r}{suggest(unknown[0], known)} (known: {', '.join(known)})"
            )
        return names

    def requests(
        self,
        query: str,
        images: Sequence[ImageLike],
        response: str | None,
        *,
        native: bool,
        options: Mapping[str, Any] | None = None,
    ) -> list[Conversation]:
        out = []
        for im in images:
            for name in self.policy_names(options):
                policy = G.SHIELDGEMMA2_POLICIES[name]
                text = policy if native else G.SHIELDGEMMA2_PROMPT.format(policy=policy)
                out.append(Conversation.single(text, images=[im]))
        return out

    def decide(
        self, outputs: Sequence[str], stage: Stage, options: Mapping[str, Any] | None = None
    ) -> GuardDecision:
        try:
            p = [1.0 if G.parse_yes_no_word(t) else 0.0 for t in outputs]
        except Unparsable as e:
            return GuardDecision(None, reason=str(e))
        return self.decide_probabilities(p, options)

    def decide_probabilities(
        self, p_yes: Sequence[float], options: Mapping[str, Any] | None
    ) -> GuardDecision:
        names = self.policy_names(options)
        threshold = float((options or {}).get("threshold", 0.5))
        per_policy: dict[str, float] = {}
        for i, p in enumerate(p_yes):  # image-major, as requests() orders them
            key = names[i % len(names)]
            per_policy[key] = max(per_policy.get(key, 0.0), float(p))
        violated = [k for k, p in per_policy.items() if p > threshold]
        return GuardDecision(
            bool(violated),
            violated,
            [G.SHIELDGEMMA2_POLICIES[k].split(":")[0] for k in violated],
            score=max(per_policy.values()) if per_policy else None,
            extra={"p_yes": per_policy},
        )


FORMATS: dict[str, GuardFormat] = {
    f.name: f
    for f in (
        LlamaGuardFormat(
            "llamaguard3v",
            "Llama Guard 3 Vision model card and chat template (meta-llama/Llama-Guard-3-11B-Vision)",
            ("input", "output"),
            max_new_tokens=16,
            native_marker=G.LLAMA_GUARD_TEMPLATE_MARKER,
            images="last",
            categories=G.LLAMA_GUARD_3_VISION_CATEGORIES,
        ),
        LlamaGuardFormat(
            "llamaguard4",
            "Llama Guard 4 model card (meta-llama/Llama-Guard-4-12B) and llama-stack's prompt for it",
            ("input", "output"),
            max_new_tokens=16,
            native_marker=G.LLAMA_GUARD_TEMPLATE_MARKER,
            images="all",
            categories=G.LLAMA_GUARD_4_CATEGORIES,
            prompt_categories=G.LLAMA_GUARD_4_PROMPT_CATEGORIES,
        ),
        GuardReasonerFormat(
            "guardreasoner_vl",
            "GuardReasoner-VL official template.py / deploy.py (yueliu1999/GuardReasoner-VL-7B)",
            ("input", "output"),
            max_new_tokens=512,
        ),
        LlavaGuardFormat(
            "llavaguard",
            "LlavaGuard v1.2 model card policy prompt (AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf)",
            ("input",),
            max_new_tokens=200,
            needs_image=True,
        ),
        ShieldGemma2Format(
            "shieldgemma2",
            "ShieldGemma 2 model card prompt and policies (google/shieldgemma-2-4b-it)",
            ("input",),
            max_new_tokens=1,
            needs_image=True,
            native_marker=G.SHIELDGEMMA2_TEMPLATE_MARKER,
        ),
    )
}

#: Guard checkpoints recognised by name (lower case, without ``-``/``_``/``.``/spaces), in order.
NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("llamaguard4", "llamaguard4"),
    ("llamaguard3", "llamaguard3v"),
    ("guardreasoner", "guardreasoner_vl"),
    ("llavaguard", "llavaguard"),
    ("shieldgemma", "shieldgemma2"),
)

#: The format a guard of each family is assumed to speak when its name says nothing.
FAMILY_FORMATS: dict[str, str] = {
    "mllama": "llamaguard3v",
    "llama4": "llamaguard4",
    "qwen2_5_vl": "guardreasoner_vl",
    "llava": "llavaguard",
    "llava_onevision": "llavaguard",
    "gemma3": "shieldgemma2",
    "shieldgemma2": "shieldgemma2",
}


def get_format(name: str) -> GuardFormat:
    """The format registered as ``name`` (with "did you mean")."""
    try:
        return FORMATS[name]
    except KeyError:
        known = sorted(FORMATS)
        raise UnknownNameError(
            f"unknown guard format {name!r}{suggest(name, known)} (known: {', '.join(known)})"
        ) from None


def infer_format(model: str, family: str | None) -> str:
    """The format of a guard named ``model`` (of transformers family ``family`` when known).

    Example:
        >>> infer_format("meta-llama/Llama-Guard-4-12B", None), infer_format("ckpt/x", "mllama")
        ('llamaguard4', 'llamaguard3v')
    """
    key = "".join(ch for ch in model.lower() if ch.isalnum())
    for hint, fmt in NAME_HINTS:
        if hint in key:
            return fmt
    if family in FAMILY_FORMATS:
        return FAMILY_FORMATS[family]
    raise UserInputError(
        f"cannot tell which guard format {model!r} speaks; pass format= (one of {', '.join(sorted(FORMATS))})"
    )


__all__ = [
    "FAMILY_FORMATS",
    "FORMATS",
    "GuardDecision",
    "GuardFormat",
    "Stage",
    "get_format",
    "infer_format",
]
