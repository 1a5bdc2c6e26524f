"""ECSO's step 2, the check: the model judges its own answer, greedy and capped.

See :func:`run_check` for how the cap keeps the ``paper`` decision identical to an uncapped check,
and how each reading (``exact``, ``first_word``, ``logits``) decides.

The ``logits`` reading uses the model's **raw** next-token logits of the check prompt (one forward
pass), never logits that the model's own ``generation_config`` (a repetition penalty, ...) has
already shaped: P(yes) is a property of the model, not of its decoding settings.

Example:
    >>> results = run_check(Ecso(preset="paper").config, vlm, [check_conv], budget=64)  # doctest: +SKIP
    >>> results[0].flagged  # doctest: +SKIP
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from vlmshield.backends.base import ChatBackend
from vlmshield.conversation import Conversation
from vlmshield.defenses.ecso_prompts import (
    first_word_undecided,
    paper_flag,
    paper_undecided,
    parse_first_word,
)
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput

if TYPE_CHECKING:
    from vlmshield.defenses.ecso import EcsoConfig

#: First-round token cap of the check per reading (see :func:`run_check`): ``exact`` and ``logits``
#: decide most rows from the first token; ``first_word`` needs a complete word.
DEFAULT_CHECK_CAP_TOKENS: dict[str, int] = {"exact": 1, "logits": 1, "first_word": 4}
#: Each further round of the check multiplies its token cap by this.
CHECK_GROWTH = 4
#: Most tokens a ``first_word`` check reads when its first words are not complete at the cap.
FIRST_WORD_RETRY_TOKENS = 32


@dataclass
class CheckResult:
    """The check of one row: raw output, how it was read, the decision."""

    output: str
    method: str
    verdict: Literal["yes", "no"] | None
    flagged: bool
    p_yes: float | None = None
    rounds: int = 1
    cost: Cost = field(default_factory=Cost)


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]] | None:
    """First token ids of the spellings of "yes" and of "no" (case, leading space), minus any id shared
    by both (e.g. a lone space piece). ``None`` when either side ends up empty."""

    def firsts(words: Sequence[str]) -> set[int]:
        ids: set[int] = set()
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            if enc:
                ids.add(int(enc[0]))
        return ids

    yes = firsts(["yes", "Yes", "YES", " yes", " Yes", " YES"])
    no = firsts(["no", "No", "NO", " no", " No", " NO"])
    common = yes & no
    yes, no = yes - common, no - common
    return (sorted(yes), sorted(no)) if yes and no else None


def _first_step(backend: Any, conversations: Sequence[Conversation]) -> tuple[GenerationOutput, torch.Tensor]:
    """One forward pass of a local model: its raw next-token logits, and the greedy first token as
    the check's recorded output."""
    inputs = backend.encode(conversations)
    fwd = backend.forward_inputs(inputs, layers=[])
    first = fwd.logits.argmax(dim=-1).tolist()
    stop = set(backend.eos_token_ids)
    texts = [backend.tokenizer.decode([t], skip_special_tokens=True).strip() for t in first]
    cost = Cost(forward_passes=1, prompt_tokens=fwd.cost.prompt_tokens, new_tokens=len(first), calls=1)
    cost.wall_time_s = fwd.cost.wall_time_s
    out = GenerationOutput(
        texts=texts,
        token_ids=[[] if t in stop else [t] for t in first],
        num_new_tokens=[1] * len(first),
        num_prompt_tokens=[int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()],
        finished=[t in stop for t in first],
        cost=cost,
    )
    return out, fwd.logits


def row_cost(out: GenerationOutput, j: int) -> Cost:
    """Row ``j``'s share of a batched call: its own tokens, an equal share of the wall time."""
    n = max(len(out.texts), 1)
    return Cost(
        forward_passes=out.cost.forward_passes,
        prompt_tokens=out.num_prompt_tokens[j] if j < len(out.num_prompt_tokens) else 0,
        new_tokens=out.num_new_tokens[j] if j < len(out.num_new_tokens) else 0,
        wall_time_s=out.cost.wall_time_s / n,
        calls=1,
    )


def _is_local(backend: Any) -> bool:
    from vlmshield.models import VLM

    return isinstance(backend, VLM)


def check_method(config: EcsoConfig, backend: ChatBackend) -> str:
    """How the check is read on ``backend``: ``auto`` resolves to logits (local) or first_word."""
    parse = config.check_parse
    if parse == "auto":
        return "logits" if _is_local(backend) else "first_word"
    if parse == "logits" and not _is_local(backend):
        raise UserInputError(
            f"check_parse=logits needs a local model, but the backend is {backend.name}; use "
            "check_parse=first_word"
        )
    return parse


def run_check(
    config: EcsoConfig, backend: ChatBackend, conversations: Sequence[Conversation], budget: int
) -> list[CheckResult]:
    """Step 2 on a batch of check conversations.

    The check is greedy and capped: a first round of ``check_cap_tokens`` new tokens (default 1
    for ``exact`` and ``logits``, 4 for ``first_word``), then, only for rows whose reading the cap
    left open, further rounds with 4x the cap each, up to a limit. Rows that finish (EOS) or become
    decided leave at once. A row judged safe thus usually costs one prefill and one decoding step;
    a ``paper`` row answering ``Yes.`` costs a second, short round.

    ``exact`` (the ``paper`` rule) keeps the paper's decision identical to an uncapped check run
    with ``budget`` new tokens (the answer's budget). A capped greedy output is a token prefix of
    the uncapped one. :func:`~vlmshield.defenses.ecso_prompts.paper_undecided` is true exactly
    when some continuation of the prefix could still read ``yes``/``yes.`` after strip +
    lower-case, i.e. when the prefix (after leading whitespace) is still a prefix of ``yes.`` or
    is ``yes``/``yes.`` plus whitespace. So a row is final when it finished within the cap (its
    text is the full text) or when that test is false (no continuation can be flagged: anything
    longer than ``yes.`` that is not whitespace-padded ``yes``/``yes.`` is known not to match from
    its first deviating character on). Still-open rows are generated again (greedy: the same
    prefix, continued) with larger caps, the last at ``budget`` itself, where the text is exactly
    what the uncapped check would have produced. Outputs that do not start like ``yes`` ("No",
    "The response ...") are final after one token.

    ``first_word`` reads the first yes/no word (:func:`parse_first_word`); rows whose first words
    are not complete yet get further rounds up to 32 tokens. ``logits`` compares the total
    probability of the first tokens of "yes" and "no" at the first step (local models only; it
    falls back to ``first_word`` when the tokenizer gives no distinct first tokens); its raw output
    is only for the record.
    """
    if not conversations:
        return []
    method = check_method(config, backend)
    yes_no = yes_no_token_ids(backend.tokenizer) if method == "logits" else None  # type: ignore[attr-defined]
    if method == "logits" and yes_no is None:
        method = "first_word"
    cap = config.check_cap_tokens or DEFAULT_CHECK_CAP_TOKENS[method]
    cap = min(cap, budget)
    cfg = GenerationConfig(max_new_tokens=cap)
    raw_logits: torch.Tensor | None = None
    if method == "logits":
        out, raw_logits = _first_step(backend, conversations)
    else:
        out = backend.generate(conversations, cfg)
    n = len(conversations)
    texts = list(out.texts)
    costs = [row_cost(out, j) for j in range(n)]
    rounds = [1] * n
    finished = [bool(out.finished[j]) if j < len(out.finished) else False for j in range(n)]
    undecided: Callable[[str], bool] | None = None
    limit = cap
    if method == "exact":
        undecided, limit = paper_undecided, budget
    elif method == "first_word":
        undecided, limit = first_word_undecided, min(budget, FIRST_WORD_RETRY_TOKENS)
    pending = [j for j in range(n) if undecided and not finished[j] and undecided(texts[j])]
    k = cap
    while pending and undecided and k < limit:
        k = min(k * CHECK_GROWTH, limit)
        more = backend.generate([conversations[j] for j in pending], GenerationConfig(max_new_tokens=k))
        for m, j in enumerate(pending):
            texts[j] = more.texts[m]
            finished[j] = bool(more.finished[m]) if m < len(more.finished) else False
            costs[j] = costs[j] + row_cost(more, m)
            rounds[j] += 1
        pending = [j for j in pending if not finished[j] and undecided(texts[j])]
    results = []
    for j in range(n):
        p_yes: float | None = None
        verdict: Literal["yes", "no"] | None
        if method == "exact":
            flagged = paper_flag(texts[j])
            verdict = "yes" if flagged else "no"
        elif method == "logits":
            assert raw_logits is not None and yes_no is not None
            row = raw_logits[j]
            lse_yes = torch.logsumexp(row[yes_no[0]], dim=0)
            lse_no = torch.logsumexp(row[yes_no[1]], dim=0)
            p_yes = float(torch.sigmoid(lse_yes - lse_no))
            if math.isnan(p_yes):
                p_yes = 0.0
            flagged = p_yes > config.check_threshold
            verdict = "yes" if flagged else "no"
        else:
            verdict = parse_first_word(texts[j])
            flagged = verdict == "yes" or (verdict is None and config.unparsed == "unsafe")
        results.append(CheckResult(texts[j], method, verdict, flagged, p_yes, rounds[j], costs[j]))
    return results
