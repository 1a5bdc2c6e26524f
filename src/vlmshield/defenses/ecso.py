"""ECSO: "Eyes Closed, Safety On" (Gou et al., arXiv 2403.09572).

A VLM's text-only safety alignment still works; images bypass it. ECSO, per sample:

1. answers the query with the image;
2. asks the same model, with the image, whether that answer is harmful (the *check*);
3. only if flagged: asks for a caption of the image conditioned on the query;
4. only if flagged: answers again from caption + query with **no image at all** (no image tokens, no
   pixel values: the conversation's :meth:`~vlmshield.conversation.Conversation.text_only` copy with
   the final prompt as its last user turn; system turn and earlier turns are kept as text).

Unflagged samples keep answer (1). Every step is one batched ``generate`` call over the rows that need
it, through the :class:`~vlmshield.backends.ChatBackend` protocol, so the same code runs on a local
:class:`~vlmshield.models.VLM` or on any OpenAI-compatible endpoint (``backend=openai``).

Conversations without an image: answer (1) is already an "eyes closed" answer, so ECSO is the
identity for them: steps 2-4 are skipped (``details["skipped"] == "no image"``, ``flagged`` is None).

The check never generates long text: see :meth:`Ecso.check` for the cap and why it keeps the
``paper`` decision identical to an uncapped check.

Example:
    >>> from vlmshield.defenses import build_defense
    >>> ecso = build_defense("ecso:preset=paper")
    >>> results = ecso.generate(vlm, [conv], GenerationConfig(max_new_tokens=128))  # doctest: +SKIP
    >>> results[0].details["flagged"]  # doctest: +SKIP
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from vlmshield.backends.base import ChatBackend
from vlmshield.conversation import Conversation
from vlmshield.defenses.base import DefenseResult
from vlmshield.defenses.ecso_check import (
    DEFAULT_CHECK_CAP_TOKENS,
    CheckResult,
    row_cost,
    run_check,
    yes_no_token_ids,
)
from vlmshield.defenses.ecso_prompts import (
    PRESETS,
    render_template,
    template_fields,
    templates_sha256,
)
from vlmshield.defenses.registry import DEFENSES, DefenseConfig, validate_config
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost, GenerationConfig

if TYPE_CHECKING:
    from vlmshield.models import VLM

Step = Literal["answer", "check", "caption", "final"]
STEPS: tuple[Step, ...] = ("answer", "check", "caption", "final")
CheckParse = Literal["exact", "first_word", "logits", "auto"]


def _invalid(message: str) -> PydanticCustomError:
    """A validation error shown as ``message`` alone (no "Value error," prefix)."""
    return PydanticCustomError("ecso_argument", message)


def _template(kind: str, text: str) -> str:
    try:
        template_fields(kind, text)
    except ValueError as e:
        raise _invalid(str(e)) from None
    return text


class EcsoConfig(DefenseConfig):
    """ECSO's arguments. ``preset`` fills every argument not given explicitly."""

    preset: Literal["paper", "default"] = "default"
    check_template: str
    caption_template: str
    final_template: str
    response_max_chars: int = Field(
        ge=0, description="cut the first answer to this many characters in the check prompt (0 = never)"
    )
    check_parse: CheckParse = Field(
        description="exact: the paper's rule; first_word: first yes/no word; logits: P(yes) vs P(no) at "
        "the first step (local models); auto: logits when the backend is a local model, else first_word"
    )
    check_cap_tokens: int | None = Field(
        None,
        ge=1,
        le=256,
        description="new tokens of the check's first round; None: 1 for exact and logits, 4 for first_word",
    )
    check_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="logits check: flag when P(yes) > this")
    unparsed: Literal["safe", "unsafe"] = Field(
        "safe", description="first_word check: how an answer with no yes/no word is treated"
    )
    greedy: bool = Field(description="all steps greedy (the paper); else steps 1, 3, 4 follow the config")
    system: str | None = Field(
        None,
        description="one system turn for every step (the paper preset: the Vicuna template's); None keeps "
        "the conversation's own system turn in every step",
    )
    answer_max_new_tokens: int | None = Field(None, ge=1, le=32768, description="step 1; None: the config's")
    caption_max_new_tokens: int | None = Field(None, ge=1, le=32768, description="step 3; None: the config's")
    final_max_new_tokens: int | None = Field(None, ge=1, le=32768, description="step 4; None: the config's")
    force_flag: Literal["auto", "always", "never"] = Field(
        "auto", description="override the check's decision (the check still runs); for tests and timing"
    )
    backend: Literal["local", "openai"] = "local"
    model: str | None = Field(None, description="backend=openai: the served model name")
    base_url: str | None = Field(None, description="backend=openai: default env VLMSHIELD_OPENAI_BASE_URL")
    max_concurrency: int = Field(8, ge=1, le=256)
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "api_key" in data:
            raise _invalid(
                "api_key is not accepted here (specs are recorded in manifests); set "
                "VLMSHIELD_OPENAI_API_KEY or OPENAI_API_KEY in the environment"
            )
        preset = data.get("preset", "default")
        if isinstance(preset, str) and preset in PRESETS:
            return {**PRESETS[preset], **data}
        return data

    @field_validator("system")
    @classmethod
    def _empty_system_is_none(cls, v: str | None) -> str | None:
        return v if v else None

    @field_validator("check_template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        return _template("check", v)

    @field_validator("caption_template")
    @classmethod
    def _caption_template(cls, v: str) -> str:
        return _template("caption", v)

    @field_validator("final_template")
    @classmethod
    def _final_template(cls, v: str) -> str:
        return _template("final", v)

    @model_validator(mode="after")
    def _backend_args(self) -> EcsoConfig:
        if self.backend == "openai":
            if not self.model:
                raise _invalid("backend=openai needs model=NAME (the served model's name)")
            if self.check_parse == "logits":
                raise _invalid(
                    "check_parse=logits needs a local model; use check_parse=first_word (or auto) with "
                    "backend=openai"
                )
        elif self.model is not None or self.base_url is not None:
            raise _invalid("model and base_url only apply with backend=openai")
        return self


class Ecso:
    """The ECSO defense object (registered as ``ecso``).

    Args (all optional; see :class:`EcsoConfig` and ``docs/ecso.md``): ``preset`` (``default`` or
    ``paper``), ``check_template`` / ``caption_template`` / ``final_template`` (or ``*_file=PATH``),
    ``response_max_chars``, ``check_parse``, ``check_cap_tokens``, ``check_threshold``, ``unparsed``,
    ``greedy``, ``force_flag``, ``backend`` (``local`` or ``openai``), ``model``, ``base_url``,
    ``max_concurrency``, ``timeout_s``.

    Example:
        >>> Ecso(preset="paper").spec()["check_parse"]
        'exact'
    """

    name = "ecso"

    def __init__(self, **kwargs: Any) -> None:
        self.config = validate_config(EcsoConfig, "ecso", kwargs)
        self._remote: ChatBackend | None = None

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.config.model_dump(), "templates_sha256": self.templates_sha256}

    @property
    def templates_sha256(self) -> str:
        c = self.config
        return templates_sha256(c.check_template, c.caption_template, c.final_template)

    # ------------------------------------------------------------------ prompts
    def check_prompt(self, query: str, response: str) -> str:
        limit = self.config.response_max_chars
        cut = response[:limit] if limit else response
        return render_template("check", self.config.check_template, query=query, response=cut)

    def caption_prompt(self, query: str) -> str:
        return render_template("caption", self.config.caption_template, query=query)

    def final_prompt(self, caption: str, query: str) -> str:
        return render_template("final", self.config.final_template, caption=caption, query=query)

    def system_for(self, conv: Conversation) -> str | None:
        """The system turn of every step for ``conv``: ``system`` if set, else ``conv``'s own."""
        return self.config.system if self.config.system is not None else conv.system_text

    def answer_conversation(self, conv: Conversation) -> Conversation:
        """Step 1's input: ``conv`` itself, with the configured system turn if one is set."""
        return conv.with_system(self.config.system) if self.config.system is not None else conv

    def check_conversation(self, conv: Conversation, response: str) -> Conversation:
        """Step 2's input: one user turn with all of ``conv``'s images and the check prompt (after the
        step's system turn, see :meth:`system_for`)."""
        prompt = self.check_prompt(conv.last_user_text, response)
        return Conversation.single(prompt, images=conv.images, system=self.system_for(conv))

    def caption_conversation(self, conv: Conversation) -> Conversation:
        """Step 3's input: one user turn with all of ``conv``'s images and the caption prompt (after the
        step's system turn)."""
        prompt = self.caption_prompt(conv.last_user_text)
        return Conversation.single(prompt, images=conv.images, system=self.system_for(conv))

    def final_conversation(self, conv: Conversation, caption: str) -> Conversation:
        """Step 4's input: ``conv`` without any image, its last user turn replaced by the final prompt
        (system turn and earlier turns kept as text; the configured system turn if one is set)."""
        final = conv.text_only().with_last_user_text(self.final_prompt(caption, conv.last_user_text))
        return final.with_system(self.config.system) if self.config.system is not None else final

    # ------------------------------------------------------------------ backend
    def backend_for(self, vlm: ChatBackend | None) -> ChatBackend:
        """The backend the steps run on: ``vlm``, or the OpenAI-compatible client with ``backend=openai``."""
        if self.config.backend == "openai":
            if self._remote is None:
                from vlmshield.backends.openai_compat import OpenAIChatBackend

                self._remote = OpenAIChatBackend(
                    self.config.base_url,
                    self.config.model,
                    max_concurrency=self.config.max_concurrency,
                    timeout_s=self.config.timeout_s,
                )
            return self._remote
        if vlm is None:
            raise UserInputError("ecso with backend=local needs a model; pass a VLM (or use backend=openai)")
        return vlm

    def close(self) -> None:
        """Close the remote client's connections, if any."""
        close = getattr(self._remote, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ steps
    def check(
        self, backend: ChatBackend, conversations: Sequence[Conversation], budget: int
    ) -> list[CheckResult]:
        """Step 2 on a batch of check conversations (see :func:`~vlmshield.defenses.ecso_check.run_check`)."""
        return run_check(self.config, backend, conversations, budget)

    def generate(
        self,
        vlm: VLM | ChatBackend | None,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        *,
        categories: Sequence[str | None] | None = None,
    ) -> list[DefenseResult]:
        """Run the four steps, each batched over the rows that need it.

        ``vlm`` may be any :class:`ChatBackend`; with ``backend=openai`` it is ignored (may be None).
        ``categories`` are accepted for the protocol and not used.
        """
        config = config or GenerationConfig()
        backend = self.backend_for(vlm)
        convs = list(conversations)
        n = len(convs)
        if n == 0:
            return []
        answer_cfg = config.with_(do_sample=False) if self.config.greedy else config
        c = self.config
        step_cfg = {
            "answer": answer_cfg.with_(max_new_tokens=c.answer_max_new_tokens or answer_cfg.max_new_tokens),
            "caption": answer_cfg.with_(max_new_tokens=c.caption_max_new_tokens or answer_cfg.max_new_tokens),
            "final": answer_cfg.with_(max_new_tokens=c.final_max_new_tokens or answer_cfg.max_new_tokens),
        }
        rows: list[dict[str, Any]] = [
            {
                "preset": self.config.preset,
                "has_image": c.num_images > 0,
                "skipped": None if c.num_images > 0 else "no image",
                "first_answer": "",
                "check_output": None,
                "check_method": None,
                "check_verdict": None,
                "p_yes": None,
                "check_rounds": 0,
                "flagged": None,
                "flag_forced": False,
                "caption": None,
                "final_answer": None,
                "cost": {},
            }
            for c in convs
        ]
        costs: list[dict[str, Cost]] = [{} for _ in range(n)]
        token_ids: list[list[int]] = [[] for _ in range(n)]

        # (1) answer with the image
        out1 = backend.generate([self.answer_conversation(c) for c in convs], step_cfg["answer"])
        for i in range(n):
            rows[i]["first_answer"] = out1.texts[i]
            token_ids[i] = list(out1.token_ids[i]) if i < len(out1.token_ids) else []
            costs[i]["answer"] = row_cost(out1, i)

        # (2) the same model, with the image, judges the answer
        with_image = [i for i in range(n) if convs[i].num_images > 0]
        checks = self.check(
            backend,
            [self.check_conversation(convs[i], out1.texts[i]) for i in with_image],
            budget=step_cfg["answer"].max_new_tokens,
        )
        flagged: list[int] = []
        for i, res in zip(with_image, checks, strict=True):
            decision = res.flagged
            if self.config.force_flag != "auto":
                decision = self.config.force_flag == "always"
            rows[i].update(
                check_output=res.output,
                check_method=res.method,
                check_verdict=res.verdict,
                p_yes=res.p_yes,
                check_rounds=res.rounds,
                flagged=decision,
                flag_forced=self.config.force_flag != "auto",
            )
            costs[i]["check"] = res.cost
            if decision:
                flagged.append(i)

        # (3) query-aware caption, flagged rows only
        if flagged:
            out3 = backend.generate(
                [self.caption_conversation(convs[i]) for i in flagged], step_cfg["caption"]
            )
            captions = {i: out3.texts[k] for k, i in enumerate(flagged)}
            for k, i in enumerate(flagged):
                rows[i]["caption"] = out3.texts[k]
                costs[i]["caption"] = row_cost(out3, k)

            # (4) answer from caption + query, no image at all
            out4 = backend.generate(
                [self.final_conversation(convs[i], captions[i]) for i in flagged], step_cfg["final"]
            )
            for k, i in enumerate(flagged):
                rows[i]["final_answer"] = out4.texts[k]
                token_ids[i] = list(out4.token_ids[k]) if k < len(out4.token_ids) else []
                costs[i]["final"] = row_cost(out4, k)

        results = []
        for i in range(n):
            total = Cost()
            for step in STEPS:
                if step in costs[i]:
                    total = total + costs[i][step]
            rows[i]["cost"] = {step: costs[i][step].to_dict() for step in STEPS if step in costs[i]}
            text = rows[i]["final_answer"] if rows[i]["flagged"] else rows[i]["first_answer"]
            results.append(DefenseResult(text=text, token_ids=token_ids[i], cost=total, details=rows[i]))
        return results


DEFENSES.register("ecso", Ecso)

__all__ = ["DEFAULT_CHECK_CAP_TOKENS", "STEPS", "CheckResult", "Ecso", "EcsoConfig", "yes_no_token_ids"]
