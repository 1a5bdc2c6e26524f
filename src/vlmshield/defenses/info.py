"""What each registered defense is, as data: paper, type, cost profile and what it needs.

Shown by ``vlmshield list defenses`` and in ``docs/defenses.md``; :func:`defense_from_spec` uses
``derived_keys`` (keys of ``spec()`` that are facts, not arguments) to rebuild a defense from the
spec recorded in a manifest.

Types: ``baseline`` (no defense), ``decoding`` (changes how tokens are picked), ``hidden states``
(edits or reads the language model's residual stream), ``pipeline`` (several generation steps),
``filter`` (screens the input and/or the answer and refuses flagged rows), ``prompt`` (rewrites the
input text), ``composition`` (parts joined by ``+``).

Example:
    >>> DEFENSE_INFO["coca"].kind
    'decoding'
    >>> DEFENSE_INFO["guard"].needs
    'a guard model (local checkpoint or OpenAI-compatible endpoint)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["baseline", "decoding", "hidden states", "pipeline", "filter", "prompt", "composition"]


@dataclass(frozen=True)
class DefenseInfo:
    """One row of the defense catalogue.

    Attributes:
        paper: the method's source (``-`` for vlmshield's own).
        kind: see the module docstring.
        cost: the cost profile relative to plain generation.
        needs: what it needs beyond the model under test.
        local_only: needs the model's weights (hooks, logits, hidden states), not only an endpoint.
        derived_keys: ``spec()`` keys that are not constructor arguments.
    """

    paper: str
    kind: Kind
    cost: str
    needs: str
    local_only: bool = True
    derived_keys: tuple[str, ...] = ()


DEFENSE_INFO: dict[str, DefenseInfo] = {
    "none": DefenseInfo("-", "baseline", "1x (plain generation)", "nothing", local_only=False),
    "coca": DefenseInfo(
        "CoCA, Gao et al., arXiv 2409.11365",
        "decoding",
        "2 rows per sample in one batched decode (~1.3-1.5x on tiny models)",
        "nothing (a safety principle, built in)",
    ),
    "cmrm": DefenseInfo(
        "CMRM, arXiv 2410.09047",
        "hidden states",
        "dataset level ~1x; sample level +2 prefills per sample",
        "steering vectors from anchors (`vlmshield calibrate cmrm`), or level=sample",
        derived_keys=("vectors_metadata",),
    ),
    "ecso": DefenseInfo(
        "ECSO, Gou et al., arXiv 2403.09572",
        "pipeline",
        "answer + 1-token check; flagged rows +caption +text-only answer (~1.2x safe, ~3.5x flagged)",
        "nothing (the model checks itself)",
        local_only=False,
        derived_keys=("templates_sha256",),
    ),
    "guard": DefenseInfo(
        "guard-model filter (Llama Guard 3 Vision / 4, GuardReasoner-VL, LlavaGuard, ShieldGemma 2)",
        "filter",
        "+1 guard call per stage per sample (ShieldGemma 2: one per policy); flagged inputs skip generation",
        "a guard model (local checkpoint or OpenAI-compatible endpoint)",
        local_only=False,
        derived_keys=("backend_name",),
    ),
    "adashield": DefenseInfo(
        "AdaShield-S, Wang et al., arXiv 2403.09513",
        "prompt",
        "~1x (a longer prompt)",
        "nothing (the static defense prompt, built in)",
        local_only=False,
    ),
    "hiddendetect": DefenseInfo(
        "HiddenDetect, arXiv 2502.14744",
        "hidden states",
        "+1 prefill per sample (logit lens over all layers); flagged rows skip generation",
        "a few safe/unsafe anchors (built in), calibrated once per model",
        derived_keys=("calibration",),
    ),
    "compose": DefenseInfo(
        "- (parts joined by +)",
        "composition",
        "the parts' costs added up",
        "what its parts need",
        local_only=False,
    ),
}


def defense_info(name: str) -> DefenseInfo | None:
    """The catalogue row of ``name`` (``None`` for a defense registered without one)."""
    return DEFENSE_INFO.get(name)


def describe_defenses(names: list[str]) -> list[str]:
    """One line per defense for ``vlmshield list defenses``: name, type, paper, cost, needs.

    Example:
        >>> describe_defenses(["coca"])[0].split("  ")[0]
        'coca'
    """
    width = max((len(n) for n in names), default=0)
    lines = []
    for n in names:
        info = DEFENSE_INFO.get(n)
        if info is None:
            lines.append(n)
            continue
        endpoint = "" if info.local_only else "; works on an endpoint"
        lines.append(
            f"{n.ljust(width)}  [{info.kind}] {info.paper} | cost: {info.cost} | needs: {info.needs}{endpoint}"
        )
    return lines


__all__ = ["DEFENSE_INFO", "DefenseInfo", "Kind", "defense_info", "describe_defenses"]
