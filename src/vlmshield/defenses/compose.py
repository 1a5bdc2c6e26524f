"""Composed defenses: parts joined by ``+`` (``cmrm:level=sample+coca:alpha=1``, ``guard:model=M+ecso``).

Each part plays one or more roles, and a composition runs them in phases, whatever order they are
written in; within a phase the written order is kept:

1. **input** (in written order): *rewriters* change the query (``adashield``); *input filters*
   screen the current conversation (``guard`` with ``stage=input|both``, ``hiddendetect``) and a
   flagged row is answered with that filter's refusal and leaves the pipeline. A filter written after
   a rewriter sees the rewritten query; written before it, the user's own.
2. **generation**: one *core* answers the remaining rows: ``coca`` (decoding), ``ecso`` (pipeline),
   or plain generation when there is none. ``cmrm`` is a *wrapper*: its steering hooks hold around
   the core (alone, it is the core itself).
3. **output** (in written order): *output filters* (``guard`` with ``stage=output|both``) screen each
   answer against the user's original conversation; a flagged answer is replaced by the filter's
   refusal.

Refused, with the reason in the error:

- two cores (``coca+ecso``: ECSO's steps are separate generations, CoCA calibrates one decode);
- two wrappers (``cmrm+cmrm``: shifts would add up), and ``cmrm`` with a core other than CoCA
  (``cmrm+ecso``: ECSO's steps run on row subsets and text-only conversations, so there is no row for
  CMRM's per-row shifts);
- ``none`` as a part (it adds nothing) and an empty composition.

``cmrm+coca``: CoCA decodes its P rows then its Q rows as one batch; each sample's CMRM vectors are
applied to both of its rows (the shift belongs to the image, which both branches share).

Costs are added up per row (screening, the core's share, output screening); ``details`` holds one
entry per part, under its label (the part's name; ``name#2`` for a repeated name; a guard with
``stage=both`` also has ``guard.output``), plus ``parts`` (the labels in order) and ``blocked_by`` (the
filter that refused the row, or ``None``).

Example:
    >>> from vlmshield.defenses import build_defense
    >>> d = build_defense("adashield+cmrm:level=sample,alpha=0.5+coca:alpha=1")
    >>> d.name, [label for label, _ in d.parts]
    ('adashield+cmrm+coca', ['adashield', 'cmrm', 'coca'])
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import Field

from vlmshield.conversation import Conversation
from vlmshield.defenses.base import Defense, DefenseResult
from vlmshield.defenses.registry import (
    DEFENSES,
    DefenseConfig,
    build_defense,
    defense_from_spec,
    validate_config,
)
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost, GenerationConfig

if TYPE_CHECKING:
    from vlmshield.models import VLM


@dataclass
class Screening:
    """One filter's decision on one row."""

    flagged: bool
    details: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)


@runtime_checkable
class InputFilter(Protocol):
    """Screens conversations before generation; flagged rows get ``refusal``."""

    refusal: str

    def screen_inputs(self, vlm: Any, conversations: Sequence[Conversation]) -> list[Screening]: ...


@runtime_checkable
class OutputFilter(Protocol):
    """Screens (conversation, answer) pairs after generation; flagged answers become ``refusal``."""

    refusal: str

    def screen_outputs(
        self, vlm: Any, conversations: Sequence[Conversation], answers: Sequence[str]
    ) -> list[Screening]: ...


@runtime_checkable
class Rewriter(Protocol):
    """Rewrites a conversation before generation (AdaShield)."""

    def rewrite(self, conv: Conversation) -> Conversation: ...


def roles_of(part: Any) -> tuple[str, ...]:
    """The roles ``part`` plays: ``rewriter``, ``input``, ``wrapper``, ``core``, ``output``."""
    from vlmshield.defenses.cmrm import Cmrm

    declared = getattr(part, "composition_roles", None)
    if callable(declared):
        return tuple(declared())
    if isinstance(part, Cmrm):
        return ("wrapper",)
    return ("core",)


# ------------------------------------------------------------------------------------ the pipeline


@dataclass
class _Row:
    conv: Conversation
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    details: dict[str, Any] = field(default_factory=dict)
    blocked_by: str | None = None


Core = Callable[
    [Any, Sequence[Conversation], GenerationConfig, Sequence[str | None] | None], list[DefenseResult]
]


def plain_core(
    vlm: Any, convs: Sequence[Conversation], config: GenerationConfig, categories: Sequence[str | None] | None
) -> list[DefenseResult]:
    """Plain generation (the ``none`` defense) as a pipeline core."""
    from vlmshield.defenses.none import NoDefense

    return NoDefense().generate(vlm, convs, config)


def run_pipeline(
    vlm: Any,
    conversations: Sequence[Conversation],
    config: GenerationConfig | None,
    categories: Sequence[str | None] | None,
    *,
    inputs: Sequence[tuple[str, Any]] = (),
    core: tuple[str, Core] | None = None,
    outputs: Sequence[tuple[str, OutputFilter]] = (),
) -> list[DefenseResult]:
    """Run the three phases (module docstring) over ``conversations``.

    ``inputs`` are ``(label, rewriter or input filter)`` in order; ``core`` is ``(label, fn)`` with
    ``fn(vlm, convs, config, categories) -> results`` (default: plain generation, unlabelled).
    """
    config = config or GenerationConfig()
    rows = [_Row(c) for c in conversations]
    active = list(range(len(rows)))
    for label, step in inputs:
        if not active:
            break
        if isinstance(step, InputFilter):
            screens = step.screen_inputs(vlm, [rows[i].conv for i in active])
            for i, s in zip(active, screens, strict=True):
                rows[i].cost = rows[i].cost + s.cost
                rows[i].details[label] = s.details
                if s.flagged:
                    rows[i].text, rows[i].blocked_by = step.refusal, label
            active = [i for i in active if rows[i].blocked_by is None]
        else:
            for i in active:
                rows[i].conv = step.rewrite(rows[i].conv)
                rows[i].details[label] = {"rewritten": True}
    if active:
        core_label, fn = core if core is not None else ("", plain_core)
        cats = [categories[i] for i in active] if categories else None
        results = fn(vlm, [rows[i].conv for i in active], config, cats)
        if len(results) != len(active):
            raise RuntimeError(
                f"{core_label or 'generation'} returned {len(results)} results for {len(active)} rows"
            )
        for i, r in zip(active, results, strict=True):
            rows[i].text, rows[i].token_ids = r.text, list(r.token_ids)
            rows[i].cost = rows[i].cost + r.cost
            if core_label:
                rows[i].details[core_label] = dict(r.details)
    for label, flt in outputs:
        if not active:
            break
        screens = flt.screen_outputs(vlm, [conversations[i] for i in active], [rows[i].text for i in active])
        for i, s in zip(active, screens, strict=True):
            rows[i].cost = rows[i].cost + s.cost
            rows[i].details[label] = s.details
            if s.flagged:
                rows[i].details[label]["replaced_answer"] = rows[i].text
                rows[i].text, rows[i].token_ids, rows[i].blocked_by = flt.refusal, [], label
        active = [i for i in active if rows[i].blocked_by is None]
    return [
        DefenseResult(
            text=r.text, token_ids=r.token_ids, cost=r.cost, details={**r.details, "blocked_by": r.blocked_by}
        )
        for r in rows
    ]


# ---------------------------------------------------------------------------------- CMRM as wrapper


def cmrm_row_vectors(
    cmrm: Any, vlm: VLM, conversations: Sequence[Conversation]
) -> tuple[Any, list[int], Cost]:
    """Each row's CMRM vectors ``[B, layers, H]``, the layers, and the extra cost: the same
    preparation as :meth:`vlmshield.defenses.cmrm.Cmrm.generate` (:meth:`~vlmshield.defenses.cmrm.Cmrm.row_vectors`)."""
    return cmrm.row_vectors(vlm, conversations)  # type: ignore[no-any-return]


def cmrm_around(cmrm: Any, label: str, core: tuple[str, Core], rows_per_sample: int) -> tuple[str, Core]:
    """``core`` run inside CMRM's steering hooks; each sample's vectors repeated ``rows_per_sample``
    times (CoCA: its P rows, then its Q rows)."""
    from vlmshield.defenses.steering import steer

    core_label, fn = core

    def run(
        vlm: Any, convs: Sequence[Conversation], config: GenerationConfig, cats: Sequence[str | None] | None
    ) -> list[DefenseResult]:
        import torch

        t0 = time.perf_counter()
        vectors, layers, extra = cmrm_row_vectors(cmrm, vlm, convs)
        prep = time.perf_counter() - t0
        tiled = torch.cat([vectors] * rows_per_sample) if rows_per_sample > 1 else vectors
        with steer(vlm, tiled, alpha=cmrm.alpha, layers=layers, positions=cmrm.config.positions):
            results = fn(vlm, convs, config, cats)
        n = max(len(convs), 1)
        share = Cost(
            forward_passes=extra.forward_passes,
            prompt_tokens=extra.prompt_tokens // n,
            wall_time_s=prep / n,
            calls=extra.calls,
        )
        for i, r in enumerate(results):
            r.cost = r.cost + share
            r.details = {
                core_label: dict(r.details),
                label: {
                    "level": cmrm.config.level,
                    "alpha": cmrm.alpha,
                    "mode": cmrm.config.mode,
                    "shift_norm": float(vectors[i].norm(dim=-1).mean()),
                },
            }
        return results

    return f"{label}+{core_label}", run


def _defense_core(defense: Defense) -> Core:
    def run(
        vlm: Any, convs: Sequence[Conversation], config: GenerationConfig, cats: Sequence[str | None] | None
    ) -> list[DefenseResult]:
        return defense.generate(vlm, convs, config, categories=cats)

    return run


# ------------------------------------------------------------------------------------ composition


class ComposeConfig(DefenseConfig):
    """The composition's only argument: its parts, spec strings or JSON spec objects."""

    parts: list[str | dict[str, Any]] = Field(min_length=1)


class Composition:
    """Parts joined by ``+`` (registered as ``compose``; see the module docstring).

    Example:
        >>> Composition(parts=["adashield", "coca:alpha=0"]).spec()["parts"][1]["alpha"]
        0.0
    """

    def __init__(self, **kwargs: Any) -> None:
        cfg = validate_config(ComposeConfig, "compose", kwargs)
        built: list[Defense] = []
        for part in cfg.parts:
            d = build_defense(part) if isinstance(part, str) else defense_from_spec(part)
            built.extend([p for _, p in d.parts] if isinstance(d, Composition) else [d])
        self.parts: list[tuple[str, Defense]] = []
        seen: dict[str, int] = {}
        for d in built:
            seen[d.name] = seen.get(d.name, 0) + 1
            self.parts.append((d.name if seen[d.name] == 1 else f"{d.name}#{seen[d.name]}", d))
        self.name = "+".join(d.name for _, d in self.parts)
        self._plan()

    def _plan(self) -> None:
        from vlmshield.defenses.coca import Coca
        from vlmshield.defenses.none import NoDefense

        self.inputs: list[tuple[str, Any]] = []
        self.outputs: list[tuple[str, Any]] = []
        cores: list[tuple[str, Defense]] = []
        wrappers: list[tuple[str, Defense]] = []
        for label, d in self.parts:
            if isinstance(d, NoDefense):
                raise UserInputError("'none' cannot be part of a composition (it adds nothing); drop it")
            roles = roles_of(d)
            for role in roles:
                if role in ("rewriter", "input"):
                    self.inputs.append((label, d))
                elif role == "output":
                    self.outputs.append((f"{label}.output" if "input" in roles else label, d))
                elif role == "wrapper":
                    wrappers.append((label, d))
                else:
                    cores.append((label, d))
        if len(cores) > 1:
            a, b = cores[0][0], cores[1][0]
            raise UserInputError(
                f"{a}+{b}: a composition has one generation core; {a} and {b} both generate the answer "
                "(combine one of them with filters, prompts or cmrm)"
            )
        if len(wrappers) > 1:
            raise UserInputError("two cmrm parts in one composition: their shifts would add up; keep one")
        self.core: tuple[str, Core] | None = None
        if cores:
            self.core = (cores[0][0], _defense_core(cores[0][1]))
        if wrappers:
            w_label, w = wrappers[0]
            if not cores:
                self.core = (w_label, _defense_core(w))
            elif isinstance(cores[0][1], Coca):
                self.core = cmrm_around(w, w_label, (cores[0][0], _defense_core(cores[0][1])), 2)
            else:
                raise UserInputError(
                    f"{w_label}+{cores[0][0]}: cmrm can wrap plain generation or coca only; "
                    f"{cores[0][0]} runs separate generations on other conversations, so CMRM's per-row "
                    "shifts have no row to apply to"
                )

    def spec(self) -> dict[str, Any]:
        return {"name": "compose", "parts": [d.spec() for _, d in self.parts]}

    def close(self) -> None:
        """Close the parts' remote clients, if any."""
        for _, d in self.parts:
            close = getattr(d, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    def generate(
        self,
        vlm: Any,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        *,
        categories: Sequence[str | None] | None = None,
    ) -> list[DefenseResult]:
        results = run_pipeline(
            vlm, conversations, config, categories, inputs=self.inputs, core=self.core, outputs=self.outputs
        )
        labels = [label for label, _ in self.parts]
        for r in results:
            _flatten_core_details(r.details)
            r.details["parts"] = labels
        return results


def _flatten_core_details(details: dict[str, Any]) -> None:
    """``cmrm+coca`` core details come nested under their joint label; keep one entry per part."""
    for key in [k for k in details if "+" in k and isinstance(details[k], Mapping)]:
        details.update(details.pop(key))


DEFENSES.register("compose", Composition)

__all__ = [
    "Composition",
    "InputFilter",
    "OutputFilter",
    "Rewriter",
    "Screening",
    "cmrm_row_vectors",
    "plain_core",
    "roles_of",
    "run_pipeline",
]
