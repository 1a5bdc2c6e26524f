"""CoCA: constitutional calibration (Gao et al., arXiv 2409.11365).

Two branches per sample share the image(s) and every generated token: P is the conversation with a
safety principle, Q the same conversation without it. At each step the next-token logits are

    z = z_P + alpha * (z_P - z_Q)        (= z_Q + (1 + alpha) * (z_P - z_Q))

i.e. classifier-free guidance towards the principle with scale ``1 + alpha``. ``alpha = 0`` is plain
principle prompting, ``alpha = -1`` the undefended model.

How it runs: the 2B branch rows (P rows then Q rows) go through the model's own ``generate`` as one
left-padded batch with a KV cache, so each step is one batched forward pass. A logits processor
computes the calibrated logits of each pair, picks the token (greedy or sampled from the calibrated
distribution) and forces that same token on both rows of the pair. Everything the family's generate
does (multimodal rotary positions, attention masks, caches) stays the model's own.

Order of operations (our choice, documented in ``docs/defenses.md``): transformers' ``generate`` runs
the logits processors of the model's ``generation_config`` *before* custom processors, so a real
checkpoint's ``repetition_penalty`` (Qwen2-VL ships 1.05) would penalise each branch against its own
prompt and ``1 + alpha`` would amplify that artefact. Here the outer ``generate`` keeps only the
processors that act identically on both rows of a pair (minimum length, forced and suppressed
tokens); the logit shaping that depends on a row's context or shapes the distribution (sequence bias,
repetition penalty, no-repeat n-grams, bad words; temperature, top-k, top-p, min-p, typical,
epsilon, eta when sampling) runs **once, after calibration**, over the Q row without its padding,
i.e. the conversation without the principle plus the generated tokens, exactly as the undefended
model would apply it. Hence ``alpha = -1`` equals the undefended model with its own configuration,
and the principle's words are never penalised.

Default ``alpha = 1.0`` (guidance scale 2): it doubles the principle's effect on the logits while
keeping outputs fluent on small models. ``preset=omnisafebench`` reproduces the public
re-implementation in OmniSafeBench-MM (``config/defenses/coca.yaml``: alpha 4 and its principle text;
``defenses/utils.py``: the principle joined to the question with one space before it, greedy).

Example:
    >>> from vlmshield.defenses import build_defense
    >>> coca = build_defense("coca:alpha=1.5,position=before")
    >>> results = coca.generate(vlm, [conv], GenerationConfig(max_new_tokens=64))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from vlmshield.conversation import Conversation
from vlmshield.defenses.base import DefenseResult
from vlmshield.defenses.coca_prefix import share_prefix
from vlmshield.defenses.registry import DEFENSES, DefenseConfig, validate_config
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput, timed
from vlmshield.models.image_features import encode_images_once

if TYPE_CHECKING:
    from vlmshield.models import VLM

#: The project's default safety principle (written for vlmshield).
DEFAULT_PRINCIPLE = (
    "Safety principle: do not help with anything harmful, illegal or unethical, whether it is asked in "
    "the text or shown in the image; refuse such requests briefly."
)

#: The principle of the public re-implementation in OmniSafeBench-MM (``config/defenses/coca.yaml``,
#: ``safety_principle``), quoted as a method parameter.
OMNISAFEBENCH_PRINCIPLE = (
    "The assistant should answer in a harmless, ethical and inoffensive manner. "
    "The assistant cannot provide answers related to illegal activities."
)

Position = Literal["system", "before", "after"]

#: Values each preset gives to the arguments not passed explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "omnisafebench": {
        "alpha": 4.0,
        "principle": OMNISAFEBENCH_PRINCIPLE,
        "position": "before",
        "separator": " ",
    },
}


def calibrate_logits(z_p: torch.Tensor, z_q: torch.Tensor, alpha: float) -> torch.Tensor:
    """``z_P + alpha * (z_P - z_Q)``, without modifying the inputs.

    Where either branch has ``-inf`` (a token masked by a processor), the result is ``-inf``.

    Example:
        >>> calibrate_logits(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), 2.0)
        tensor([1., 6.])
    """
    if z_p.shape != z_q.shape:
        raise ValueError(f"branch logits differ in shape: {tuple(z_p.shape)} vs {tuple(z_q.shape)}")
    # (1 + a) * z_P - a * z_Q is the same formula, written so that a = 0 gives z_P and a = -1 gives
    # z_Q bit for bit.
    out = (1.0 + alpha) * z_p - alpha * z_q
    masked = torch.isneginf(z_p) | torch.isneginf(z_q)
    return out.masked_fill(masked, float("-inf"))


class CocaConfig(DefenseConfig):
    """CoCA's arguments (all validated). ``preset`` fills every argument not given explicitly."""

    preset: Literal["default", "omnisafebench"] = "default"
    alpha: float = Field(1.0, ge=-1.0, le=50.0, description="calibration strength; 0 = principle prompting")
    principle: str = DEFAULT_PRINCIPLE
    principles: dict[str, str] = Field(
        default_factory=dict, description="per-category principles; other categories use `principle`"
    )
    position: Position = "before"
    separator: str = Field("\n\n", description="between the principle and the user's text (before/after)")
    share: bool = Field(
        True, description="prefill the prefix P and Q share once and encode each image once (same tokens)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset", "default"), str):
            return {**PRESETS.get(data.get("preset", "default"), {}), **data}
        return data

    @field_validator("principle")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the principle is empty; pass text or principle_file=PATH")
        return v


def add_principle(
    conv: Conversation,
    principle: str,
    position: Position,
    *,
    separator: str = "\n\n",
    default_system: str | None = None,
) -> Conversation:
    """The P branch: ``conv`` with ``principle`` in the system turn, or before/after the user's text.

    ``default_system`` is the system text the chat template injects when a conversation has none
    (Qwen2-VL: "You are a helpful assistant."): with ``position="system"`` P keeps it and adds the
    principle, so that P and Q differ by the principle only.

    Example:
        >>> add_principle(Conversation.single("q"), "Be safe.", "before").last_user_text
        'Be safe.\n\nq'
    """
    if position == "system":
        system = conv.system_text if conv.system_text is not None else default_system
        return conv.with_system(f"{system}\n\n{principle}" if system else principle)
    text = conv.last_user_text
    new = f"{principle}{separator}{text}" if position == "before" else f"{text}{separator}{principle}"
    return conv.with_last_user_text(new)


_SYSTEM_PROBE, _USER_PROBE = "\x01SYSTEM\x01", "\x01USER\x01"


def template_default_system(vlm: VLM) -> str | None:
    """The system text ``vlm``'s chat template adds to a conversation that has no system turn.

    Found by rendering a probe with and without a system turn: when the template writes the same
    system block around some other text, that text is its default. ``None`` when it adds none.

    Example:
        >>> template_default_system(qwen2_vl)  # doctest: +SKIP
        'You are a helpful assistant.'
    """
    with_system = vlm.render(Conversation.single(_USER_PROBE, system=_SYSTEM_PROBE))
    without = vlm.render(Conversation.single(_USER_PROBE))
    if _SYSTEM_PROBE not in with_system:
        return None
    prefix, _, rest = with_system.partition(_SYSTEM_PROBE)
    middle = rest.partition(_USER_PROBE)[0]
    if not without.startswith(prefix) or not middle:
        return None
    end = without.find(middle + _USER_PROBE, len(prefix))
    default = without[len(prefix) : end] if end >= 0 else ""
    return default or None


def shaping_processors(hf_config: Any, device: str = "cpu") -> LogitsProcessorList:
    """The logit shaping CoCA applies once, after calibration, built from an effective transformers
    ``GenerationConfig`` (the model's own merged with the caller's), in transformers' order."""
    c = hf_config
    out = LogitsProcessorList()
    if c.sequence_bias is not None:
        out.append(SequenceBiasLogitsProcessor(sequence_bias=c.sequence_bias))
    if c.repetition_penalty is not None and c.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=c.repetition_penalty))
    if c.no_repeat_ngram_size is not None and c.no_repeat_ngram_size > 0:
        out.append(NoRepeatNGramLogitsProcessor(c.no_repeat_ngram_size))
    if c.bad_words_ids is not None:
        out.append(NoBadWordsLogitsProcessor(c.bad_words_ids, eos_token_id=c.eos_token_id))
    if c.do_sample:
        if c.temperature is not None and c.temperature != 1.0:
            out.append(TemperatureLogitsWarper(c.temperature))
        if c.top_k is not None and c.top_k != 0:
            out.append(TopKLogitsWarper(top_k=c.top_k))
        if c.top_p is not None and c.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=c.top_p))
        if c.min_p is not None:
            out.append(MinPLogitsWarper(min_p=c.min_p))
        if c.typical_p is not None and c.typical_p < 1.0:
            out.append(TypicalLogitsWarper(mass=c.typical_p))
        if c.epsilon_cutoff is not None and 0.0 < c.epsilon_cutoff < 1.0:
            out.append(EpsilonLogitsWarper(epsilon=c.epsilon_cutoff))
        if c.eta_cutoff is not None and 0.0 < c.eta_cutoff < 1.0:
            out.append(EtaLogitsWarper(epsilon=c.eta_cutoff, device=device))
    return out


#: Fields of a transformers ``GenerationConfig`` whose processors :func:`shaping_processors` applies
#: after calibration; the outer ``generate`` runs with them switched off.
SHAPING_FIELDS: dict[str, Any] = {
    "sequence_bias": None,
    "repetition_penalty": None,
    "no_repeat_ngram_size": None,
    "bad_words_ids": None,
    "encoder_repetition_penalty": None,
    "encoder_no_repeat_ngram_size": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "do_sample": False,
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "min_p": None,
    "typical_p": None,
    "epsilon_cutoff": None,
    "eta_cutoff": None,
}


class PairedCalibration(LogitsProcessor):
    """Rows ``[0, B)`` are P branches, ``[B, 2B)`` their Q twins; raw logits in, one token per pair out.

    Each step: calibrate the pair's logits, apply ``shaping`` (see :func:`shaping_processors`) over
    the Q row's own context (its padding removed), then pick the token (greedy, or drawn from the
    shaped distribution with a seeded generator) and force it on both rows. ``prompt_mask`` (``[B,
    T]``, the Q rows' prompt attention mask) marks each Q row's real prompt tokens; padding may sit
    anywhere (left, or between a shared prefix and the rest, see :mod:`.coca_prefix`).
    """

    def __init__(
        self,
        alpha: float,
        config: GenerationConfig,
        shaping: LogitsProcessorList | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> None:
        self.alpha = alpha
        self.config = config
        self.shaping = shaping if shaping is not None else LogitsProcessorList()
        self.prompt_mask = prompt_mask.bool() if prompt_mask is not None else None
        #: the left padding shared by every Q row, where the rows are padded alike (one slice then)
        self.uniform_pad: int | None = 0
        if self.prompt_mask is not None:
            first = self.prompt_mask[0]
            pad = int((~first).sum())
            left_only = bool(first[pad:].all())
            same = bool((self.prompt_mask == first).all())
            self.uniform_pad = pad if left_only and same else None
        self.generator: torch.Generator | None = None
        self.steps = 0

    def _shape(self, q_ids: torch.LongTensor, z: torch.Tensor) -> torch.Tensor:
        if not self.shaping:
            return z
        if self.uniform_pad is not None or self.prompt_mask is None:
            return self.shaping(q_ids[:, self.uniform_pad or 0 :], z)  # type: ignore[arg-type]
        width = self.prompt_mask.shape[1]
        rows = []
        for i in range(z.shape[0]):
            # the row's own context: its real prompt tokens (padding removed) + the generated ones
            context = torch.cat([q_ids[i, :width][self.prompt_mask[i]], q_ids[i, width:]])
            rows.append(self.shaping(context[None], z[i : i + 1]))  # type: ignore[arg-type]
        return torch.cat(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        half = scores.shape[0] // 2
        z = calibrate_logits(scores[:half].float(), scores[half:].float(), self.alpha)
        z = self._shape(input_ids[half:], z)  # type: ignore[arg-type]
        self.steps += 1
        if not self.config.do_sample:
            chosen = z.argmax(dim=-1)
        else:
            if self.generator is None:
                self.generator = torch.Generator(device=z.device)
                self.generator.manual_seed(self.config.seed if self.config.seed is not None else 0)
            chosen = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=self.generator).squeeze(1)
        forced = torch.full_like(scores, float("-inf"))
        rows = torch.arange(scores.shape[0], device=scores.device)
        forced[rows, torch.cat([chosen, chosen])] = 0.0
        return forced  # type: ignore[return-value]


@dataclass
class PairedOutput(GenerationOutput):
    """:func:`decode_pairs`' ``2B`` rows; ``shared_tokens[i]``: the prefix of pair ``i`` prefilled
    once for both rows (0 where it was not shared). ``num_prompt_tokens`` counts what each row
    prefilled itself (a Q row without its shared prefix)."""

    shared_tokens: list[int] = field(default_factory=list)


def decode_pairs(
    vlm: VLM,
    principle: Sequence[Conversation],
    plain: Sequence[Conversation],
    alpha: float,
    config: GenerationConfig,
    *,
    share: bool = True,
) -> PairedOutput:
    """Calibrated decoding of the P / Q pairs as one KV-cached batch of ``2B`` rows.

    Returns the ``2B`` rows' output: row ``i`` (P) and row ``B + i`` (Q) carry the same tokens.
    With ``share`` (the default), the prefix P and Q have in common is prefilled once and each
    image encoded once (:mod:`.coca_prefix`, :mod:`vlmshield.models.image_features`); ``share=False``
    prefills all ``2B`` rows in full (the same tokens; kept to measure the saving).

    Example:
        >>> out = decode_pairs(vlm, [p], [q], 1.0, GenerationConfig(max_new_tokens=8))  # doctest: +SKIP
        >>> out.token_ids[0] == out.token_ids[1]  # doctest: +SKIP
        True
    """
    if len(principle) != len(plain):
        raise UserInputError(f"{len(principle)} principle branches for {len(plain)} conversations")
    inputs = vlm.encode([*principle, *plain])
    n = len(plain)
    cost = Cost()
    with timed(cost):
        plan = share_prefix(vlm, inputs, n, config.max_new_tokens) if share else None
    if plan is not None:
        gen_inputs, prompt_mask, shared = plan.inputs, plan.prompt_mask, plan.shared_tokens
    else:
        gen_inputs = encode_images_once(vlm, inputs, copies=2) if share else inputs
        prompt_mask, shared = inputs["attention_mask"].bool(), [0] * n
    effective = vlm._hf_generation_config(config)
    # the logits come from the output head, which on a sharded model may sit on another device
    head = vlm.model.get_output_embeddings()
    logits_device = str(head.weight.device) if head is not None else str(vlm.device)
    calib = PairedCalibration(alpha, config, shaping_processors(effective, logits_device), prompt_mask[n:])
    outer = copy.deepcopy(vlm.model.generation_config)
    for key, value in SHAPING_FIELDS.items():
        if hasattr(outer, key):
            setattr(outer, key, value)
    out = vlm.generate_from_inputs(
        gen_inputs, config.with_(do_sample=False), logits_processors=[calib], base_generation_config=outer
    )
    out.cost.wall_time_s += cost.wall_time_s
    out.cost.prompt_tokens -= sum(shared)
    # the Q rows' shared prefix was not prefilled for them
    out.num_prompt_tokens[n:] = [t - k for t, k in zip(out.num_prompt_tokens[n:], shared, strict=True)]
    return PairedOutput(**vars(out), shared_tokens=shared)


class Coca:
    """The CoCA defense object (registered as ``coca``).

    Example:
        >>> Coca(alpha=2.0).spec()["alpha"]
        2.0
    """

    name = "coca"

    def __init__(self, **kwargs: Any) -> None:
        self.config = validate_config(CocaConfig, "coca", kwargs)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.config.model_dump()}

    def principle_for(self, category: str | None) -> str:
        if category is not None and category in self.config.principles:
            return self.config.principles[category]
        return self.config.principle

    def branches(
        self,
        conversations: Sequence[Conversation],
        categories: Sequence[str | None] | None = None,
        *,
        vlm: VLM | None = None,
    ) -> tuple[list[Conversation], list[Conversation]]:
        """The P (with principle) and Q (without) conversations.

        With ``position=system`` and a ``vlm`` whose template injects a default system turn, P keeps
        that default and adds the principle (see :func:`template_default_system`).
        """
        cats = list(categories) if categories is not None else [None] * len(conversations)
        if len(cats) != len(conversations):
            raise UserInputError(f"{len(cats)} categories for {len(conversations)} conversations")
        default = None
        if self.config.position == "system" and vlm is not None:
            default = template_default_system(vlm)
        p = [
            add_principle(
                c,
                self.principle_for(cat),
                self.config.position,
                separator=self.config.separator,
                default_system=default,
            )
            for c, cat in zip(conversations, cats, strict=True)
        ]
        return p, list(conversations)

    def generate(
        self,
        vlm: VLM,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        *,
        categories: Sequence[str | None] | None = None,
    ) -> list[DefenseResult]:
        config = config or GenerationConfig()
        p, q = self.branches(conversations, categories, vlm=vlm)
        if self.config.position == "system" and p and vlm.render(p[0]) == vlm.render(q[0]):
            raise UserInputError(
                f"the chat template of {vlm.name} ignores system turns, so position=system adds no "
                "principle; use coca:position=before"
            )
        out = decode_pairs(vlm, p, q, self.config.alpha, config, share=self.config.share)
        n = len(conversations)
        results = []
        for i in range(n):
            cost = Cost(
                forward_passes=out.cost.forward_passes,
                prompt_tokens=out.num_prompt_tokens[i] + out.num_prompt_tokens[n + i],
                new_tokens=2 * out.num_new_tokens[i],
                wall_time_s=out.cost.wall_time_s / n,
                calls=1,
            )
            results.append(
                DefenseResult(
                    text=out.texts[i],
                    token_ids=out.token_ids[i],
                    cost=cost,
                    details={
                        "alpha": self.config.alpha,
                        "principle": self.principle_for(categories[i] if categories else None),
                        "shared_prefix_tokens": out.shared_tokens[i],
                    },
                )
            )
        return results


DEFENSES.register("coca", Coca)
