"""Guard-model filters: a guard model screens the request and/or the answer; flagged rows are refused.

``guard:model=M[,format=F][,stage=input|output|both]``. The guard is a local checkpoint loaded with
:func:`vlmshield.load_vlm` (``model=`` the defended model's own name reuses it: self-guarding), or a
model behind an OpenAI-compatible endpoint (``backend=openai,model=NAME[,base_url=URL]``). Its prompt
format and answer parsing come from its model card (:mod:`vlmshield.defenses.guard_formats`):
``llamaguard3v``, ``llamaguard4``, ``guardreasoner_vl``, ``llavaguard``, ``shieldgemma2`` (image-only
input screening). ``format=auto`` (default) recognises the guard by its name (``Llama-Guard-4``,
``GuardReasoner``, ``LlavaGuard``, ``shieldgemma``...), else by its family (mllama -> Llama Guard 3
Vision, llama4 -> Llama Guard 4, qwen2_5_vl -> GuardReasoner-VL, llava / llava_onevision ->
LlavaGuard, gemma3 -> ShieldGemma 2); the resolved format is in every row's ``details``.

Stages: ``input`` (default: the request, text and images, before generation; a flagged row is not
generated at all), ``output`` (the answer, with the request as context), ``both``. LlavaGuard and
ShieldGemma 2 rate images only: ``stage=input`` only, and rows without an image pass unscreened
(``details["skipped"] = "no image"``).

A flagged row's text is ``refusal`` (default: the canned answer of Meta's llama-stack Llama Guard
shield, "I can't answer that. Can I help with something else?"); ``details`` records the stage, the
format, ``flagged``, the guard's categories (``S1``..., ``O1``..., ShieldGemma policies) with names, a
score where the guard gives one, and its raw answer. An answer the parser cannot read counts as
``unparsed=safe`` (default) or ``unsafe``, and is marked ``details["unparsed"]``.

Decoding: greedy, ``max_new_tokens`` per format (Llama Guard 16, GuardReasoner-VL 512, LlavaGuard
200); ShieldGemma 2 on a local model reads P(Yes) against P(No) from the first-step logits, as
``ShieldGemma2ForImageClassification`` does (with the tokenizer's ids of "Yes" and "No"), flagging a
policy above ``threshold``; over an endpoint its first answer word is read instead.

Example:
    >>> from vlmshield.defenses import build_defense
    >>> guard = build_defense("guard:model=meta-llama/Llama-Guard-3-11B-Vision,stage=both")
    >>> results = guard.generate(vlm, [conv], GenerationConfig(max_new_tokens=64))  # doctest: +SKIP
    >>> results[0].details["guard"]["flagged"]  # doctest: +SKIP
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from vlmshield.backends.base import ChatBackend
from vlmshield.conversation import Conversation
from vlmshield.defenses.base import DefenseResult
from vlmshield.defenses.compose import Screening, run_pipeline
from vlmshield.defenses.guard_formats import (
    FORMATS,
    GuardDecision,
    GuardFormat,
    Stage,
    get_format,
    infer_format,
)
from vlmshield.defenses.registry import DEFENSES, DefenseConfig, validate_config
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput
from vlmshield.judges.guard_prompts import LLAMA_STACK_REFUSAL

if TYPE_CHECKING:
    from vlmshield.models import VLM

RAW_CHARS = 2000


class GuardConfig(DefenseConfig):
    """The guard filter's arguments."""

    model: str = Field(min_length=1, description="guard checkpoint (local) or served model name (openai)")
    format: str = Field("auto", description=f"auto or one of {', '.join(sorted(FORMATS))}")
    stage: Literal["input", "output", "both"] = "input"
    refusal: str = Field(LLAMA_STACK_REFUSAL, min_length=1, description="the answer of a flagged row")
    backend: Literal["local", "openai"] = "local"
    base_url: str | None = None
    max_concurrency: int = Field(8, ge=1, le=256)
    timeout_s: float = Field(60.0, gt=0)
    device: str = "auto"
    dtype: str = "auto"
    native: Literal["auto", "true", "false"] = Field(
        "auto", description="send the raw conversation to a guard whose chat template builds the task prompt"
    )
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="default: the format's")
    batch_size: int = Field(16, ge=1, le=1024, description="guard prompts per batch")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="shieldgemma2: flag when P(Yes) > this")
    policies: str = Field("dangerous;sexual;violence", description="shieldgemma2 policies, ';'-separated")
    exclude: str = Field("", description="Llama Guard categories to leave out, e.g. S6;S8")
    unparsed: Literal["safe", "unsafe"] = "safe"
    force_flag: Literal["auto", "always", "never"] = Field(
        "auto", description="override the decision (the guard still runs); for tests and timing"
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v != "auto":
            get_format(v)
        return v


class Guard:
    """The guard filter (registered as ``guard``). ``client=`` (Python only) supplies the guard model.

    Example:
        >>> Guard(model="ckpt/guard", format="llamaguard3v", stage="both").composition_roles()
        ('input', 'output')
    """

    name = "guard"

    def __init__(self, client: ChatBackend | None = None, **kwargs: Any) -> None:
        self.config = validate_config(GuardConfig, "guard", kwargs)
        c = self.config
        if c.backend == "local" and c.base_url is not None:
            raise UserInputError("guard: base_url applies to backend=openai only")
        if c.format != "auto":
            self._check_stage(get_format(c.format))
        self._client = client
        self._loaded: ChatBackend | None = None
        self.refusal = c.refusal

    @property
    def stages(self) -> list[Stage]:
        s = self.config.stage
        return ["input", "output"] if s == "both" else [s]  # type: ignore[list-item]

    def composition_roles(self) -> tuple[str, ...]:
        """``input`` and/or ``output`` filter, per ``stage`` (see :mod:`vlmshield.defenses.compose`)."""
        return tuple(self.stages)

    def _check_stage(self, fmt: GuardFormat) -> None:
        bad = [s for s in self.stages if s not in fmt.stages]
        if bad:
            raise UserInputError(
                f"guard format {fmt.name} screens {' and '.join(fmt.stages)} only, not {bad[0]}; "
                f"use stage={fmt.stages[0]}"
            )

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, **self.config.model_dump()}
        if self._client is not None:
            d["backend_name"] = self._client.name
        return d

    def close(self) -> None:
        close = getattr(self._loaded, "close", None)
        if callable(close) and self.config.backend == "openai":
            close()

    # ---------------------------------------------------------------------------------- guard model
    def guard_backend(self, vlm: Any) -> ChatBackend:
        """The guard model: ``client``, the endpoint, ``vlm`` itself (same name) or a loaded checkpoint."""
        if self._client is not None:
            return self._client
        if self._loaded is not None:
            return self._loaded
        c = self.config
        if c.backend == "openai":
            from vlmshield.backends.openai_compat import OpenAIChatBackend

            self._loaded = OpenAIChatBackend(
                c.base_url, c.model, max_concurrency=c.max_concurrency, timeout_s=c.timeout_s
            )
        elif vlm is not None and getattr(vlm, "name", None) == c.model:
            return vlm  # type: ignore[no-any-return]
        else:
            from vlmshield import load_vlm

            self._loaded = load_vlm(c.model, device=c.device, dtype=c.dtype)
        return self._loaded

    def guard_format(self, backend: ChatBackend) -> GuardFormat:
        """The format in use (``auto`` resolved by the guard's name, then its family)."""
        if self.config.format != "auto":
            return get_format(self.config.format)
        fmt = get_format(infer_format(self.config.model, getattr(backend, "family", None)))
        self._check_stage(fmt)
        return fmt

    def native_for(self, backend: ChatBackend, fmt: GuardFormat) -> bool:
        """Whether the guard's own chat template builds the task prompt (see ``native``)."""
        if self.config.native != "auto":
            return self.config.native == "true"
        if fmt.native_marker is None:
            return False
        proc = getattr(backend, "processor", None)
        template = getattr(proc, "chat_template", None) or getattr(
            getattr(proc, "tokenizer", None), "chat_template", None
        )
        return isinstance(template, str) and fmt.native_marker in template

    def options(self) -> dict[str, Any]:
        c = self.config
        return {
            "threshold": c.threshold,
            "policies": [p.strip() for p in c.policies.split(";") if p.strip()],
            "exclude": [p.strip().upper() for p in c.exclude.split(";") if p.strip()],
        }

    # ---------------------------------------------------------------------------------- screening
    def screen(
        self, vlm: Any, conversations: Sequence[Conversation], answers: Sequence[str] | None, stage: Stage
    ) -> list[Screening]:
        """Ask the guard about every row at ``stage`` (answers needed for ``output``)."""
        backend = self.guard_backend(vlm)
        fmt = self.guard_format(backend)
        native = self.native_for(backend, fmt)
        opts = self.options()
        per_row: list[list[Conversation]] = []
        for i, conv in enumerate(conversations):
            if fmt.needs_image and not conv.images:
                per_row.append([])
                continue
            response = answers[i] if answers is not None else None
            per_row.append(
                fmt.requests(conv.last_user_text, conv.images, response, native=native, options=opts)
            )
        flat = [r for reqs in per_row for r in reqs]
        texts, p_yes, costs = self._ask(backend, fmt, flat)
        out: list[Screening] = []
        k = 0
        for reqs in per_row:
            n = len(reqs)
            base = {"stage": stage, "format": fmt.name, "native": native}
            if n == 0:
                out.append(Screening(False, {**base, "flagged": False, "skipped": "no image"}))
                continue
            if p_yes is not None and hasattr(fmt, "decide_probabilities"):
                decision: GuardDecision = fmt.decide_probabilities(p_yes[k : k + n], opts)
            else:
                decision = fmt.decide(texts[k : k + n], stage, opts)
            cost = sum(costs[k : k + n], Cost())
            out.append(self._screening(decision, base, texts[k : k + n], cost))
            k += n
        return out

    def _screening(self, d: GuardDecision, base: dict[str, Any], raw: list[str], cost: Cost) -> Screening:
        flagged = d.flagged
        details: dict[str, Any] = {**base, "categories": d.categories, "category_names": d.category_names}
        if flagged is None:
            details["unparsed"] = d.reason
            flagged = self.config.unparsed == "unsafe"
        if self.config.force_flag != "auto":
            details["flag_forced"] = True
            flagged = self.config.force_flag == "always"
        details["flagged"] = flagged
        if d.score is not None:
            details["score"] = d.score
        if d.extra:
            details.update(d.extra)
        details["guard_output"] = [t[:RAW_CHARS] for t in raw]
        return Screening(flagged, details, cost)

    def _ask(
        self, backend: ChatBackend, fmt: GuardFormat, convs: Sequence[Conversation]
    ) -> tuple[list[str], list[float] | None, list[Cost]]:
        """Guard answers (and P(Yes) for ShieldGemma 2 on a local model) with each prompt's cost."""
        from vlmshield.models import VLM

        texts: list[str] = []
        costs: list[Cost] = []
        p_yes: list[float] | None = [] if fmt.name == "shieldgemma2" and isinstance(backend, VLM) else None
        cfg = GenerationConfig(max_new_tokens=self.config.max_new_tokens or fmt.max_new_tokens)
        step = self.config.batch_size
        for start in range(0, len(convs), step):
            chunk = list(convs[start : start + step])
            if p_yes is not None:
                assert isinstance(backend, VLM)
                probs, cost = yes_probabilities(backend, chunk)
                p_yes.extend(probs)
                texts.extend("Yes" if p > 0.5 else "No" for p in probs)
                costs.extend(_shares(cost, len(chunk)))
                continue
            out = backend.generate(chunk, cfg)
            if len(out.texts) != len(chunk):
                raise RuntimeError(
                    f"guard {backend.name} returned {len(out.texts)} answers for {len(chunk)} prompts"
                )
            texts.extend(out.texts)
            costs.extend(_row_costs(out))
        return texts, p_yes, costs

    def screen_inputs(self, vlm: Any, conversations: Sequence[Conversation]) -> list[Screening]:
        return self.screen(vlm, conversations, None, "input")

    def screen_outputs(
        self, vlm: Any, conversations: Sequence[Conversation], answers: Sequence[str]
    ) -> list[Screening]:
        return self.screen(vlm, conversations, answers, "output")

    # ---------------------------------------------------------------------------------- generation
    def generate(
        self,
        vlm: VLM | ChatBackend,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        *,
        categories: Sequence[str | None] | None = None,
    ) -> list[DefenseResult]:
        """Screen the inputs, generate the unflagged rows plainly, screen the answers (per ``stage``)."""
        inputs = [("guard", self)] if "input" in self.stages else []
        label = "guard.output" if inputs else "guard"
        outputs = [(label, self)] if "output" in self.stages else []
        return run_pipeline(vlm, conversations, config, categories, inputs=inputs, outputs=outputs)


def yes_probabilities(vlm: VLM, convs: Sequence[Conversation]) -> tuple[list[float], Cost]:
    """P(Yes) against P(No) as the first answer token, from one batched forward pass."""
    import torch

    tok = vlm.tokenizer
    ids = []
    for word in ("Yes", "No"):
        enc = tok.encode(word, add_special_tokens=False)
        if not enc:
            raise UserInputError(f"the guard's tokenizer has no token for {word!r}")
        ids.append(int(enc[0]))
    if ids[0] == ids[1]:
        raise UserInputError("the guard's tokenizer gives 'Yes' and 'No' the same first token")
    fwd = vlm.forward(list(convs), layers=[])
    pair = torch.softmax(fwd.logits[:, ids].float(), dim=-1)
    return [float(p) for p in pair[:, 0].tolist()], fwd.cost


def _shares(cost: Cost, n: int) -> list[Cost]:
    n = max(n, 1)
    return [
        Cost(
            cost.forward_passes,
            cost.prompt_tokens // n,
            cost.new_tokens // n,
            cost.wall_time_s / n,
            cost.calls,
        )
        for _ in range(n)
    ]


def _row_costs(out: GenerationOutput) -> list[Cost]:
    n = max(len(out.texts), 1)
    return [
        Cost(
            forward_passes=out.cost.forward_passes,
            prompt_tokens=out.num_prompt_tokens[j] if j < len(out.num_prompt_tokens) else 0,
            new_tokens=out.num_new_tokens[j] if j < len(out.num_new_tokens) else 0,
            wall_time_s=out.cost.wall_time_s / n,
            calls=1,
        )
        for j in range(len(out.texts))
    ]


DEFENSES.register("guard", Guard)
