"""Answering a rank's units: each (batch, defense) unit generated, written in one transaction, then
judged; a failing batch is retried sample by sample, and a defense that fails on everything, batch
after batch, stops the run. :mod:`vlmshield.eval.runner` plans the run and hands each rank its units.

Example:
    >>> stats = answer_units(plan, vlm, store, judges, units, ctx, 0, False, None)  # doctest: +SKIP
    >>> stats["generated"], stats["errors"]  # doctest: +SKIP
    (240, 0)
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlmshield.errors import VlmshieldError
from vlmshield.eval import distributed, shards, steps
from vlmshield.eval.judging import judge_and_store
from vlmshield.eval.plan import DefenseEntry, EvalPlan
from vlmshield.eval.progress import progress_bar
from vlmshield.eval.store import GenerationRow, RunStore

#: A defense that fails on every sample of this many consecutive batches stops the run.
MAX_FAILED_BATCHES = 5


class RunAborted(VlmshieldError):
    """A defense or judge failed on everything it was given, batch after batch."""


def error_text(e: BaseException) -> str:
    """``Type: first line of the message`` (what an error row records)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def generate_rows(
    entry: DefenseEntry,
    vlm: Any,
    samples: Sequence[Any],
    config: Any,
    *,
    batch: int,
    index: Mapping[str, int],
    score: Callable[[Any, str], float | None],
) -> list[GenerationRow]:
    """Answer ``samples`` with one defense; on failure retry them one by one (errors become rows)."""
    t0 = time.perf_counter()
    try:
        convs = [s.to_conversation() for s in samples]
        results = entry.defense.generate(vlm, convs, config, categories=[s.category for s in samples])
        if len(results) != len(samples):
            raise RuntimeError(
                f"defense {entry.label} returned {len(results)} results for {len(samples)} samples"
            )
    except Exception as e:
        if len(samples) == 1:
            s = samples[0]
            return [
                GenerationRow(
                    entry.label,
                    s.id,
                    index[s.id],
                    batch,
                    wall_time_s=time.perf_counter() - t0,
                    details={"traceback": traceback.format_exc(limit=8)},
                    error=error_text(e),
                )
            ]
        rows: list[GenerationRow] = []
        for s in samples:
            rows.extend(generate_rows(entry, vlm, [s], config, batch=batch, index=index, score=score))
        return rows
    wall = (time.perf_counter() - t0) / len(samples)
    out = []
    for s, r in zip(samples, results, strict=True):
        out.append(
            GenerationRow(
                entry.label,
                s.id,
                index[s.id],
                batch,
                text=r.text,
                token_ids=[int(t) for t in r.token_ids],
                cost=r.cost.to_dict(),
                wall_time_s=wall,
                details=dict(r.details),
                score=score(s, r.text),
            )
        )
    return out


def answer_units(
    plan: EvalPlan,
    vlm: Any,
    store: RunStore,
    judges: Sequence[tuple[str, Any]],
    units: Sequence[shards.Unit],
    ctx: distributed.DistContext,
    done_before: int,
    progress: bool,
    console: Any,
) -> dict[str, Any]:
    """Answer and judge this rank's ``units`` into ``store``; returns this rank's counts."""
    from rich.console import Console

    from vlmshield.generation import GenerationConfig

    cfg = plan.config
    index = {s.id: i for i, s in enumerate(plan.samples)}
    by_id = {s.id: s for s in plan.samples}
    entries = {d.label: d for d in plan.defenses}
    gen_config = GenerationConfig(max_new_tokens=cfg.max_new_tokens)
    score = steps.score_fn(plan)
    failed_streak = {d.label: 0 for d in plan.defenses}
    generated = errors = n_units = 0
    t0 = time.perf_counter()
    if units:
        steps.warm_up(vlm, [by_id[i] for i in units[0].sample_ids], cfg.max_new_tokens)
    if ctx.distributed:
        total, completed = sum(len(u.sample_ids) for u in units), 0
    else:
        total, completed = len(plan.samples) * len(plan.defenses), done_before
    bar = progress_bar(progress and ctx.is_main, console or Console(stderr=True))
    with bar:
        task = bar.add_task("eval", total=total, completed=completed)
        for unit in units:
            entry = entries[unit.defense]
            todo = [by_id[i] for i in unit.sample_ids]
            bar.update(task, description=f"{entry.label}")
            rows = generate_rows(entry, vlm, todo, gen_config, batch=unit.batch, index=index, score=score)
            store.add_generations(rows)
            n_units += 1
            generated += len(rows)
            errors += sum(1 for r in rows if r.error is not None)
            steps.maybe_pause(n_units, ctx.rank)
            ok = [r for r in rows if r.error is None]
            judge_and_store(
                store,
                judges,
                [
                    {
                        "defense": r.defense,
                        "sample_id": r.sample_id,
                        "text": r.text,
                        "query": by_id[r.sample_id].query,
                        "category": by_id[r.sample_id].category,
                        "answer": by_id[r.sample_id].answer,
                        "images": by_id[r.sample_id].images,
                    }
                    for r in ok
                ],
            )
            bar.advance(task, len(rows))
            failed_streak[entry.label] = failed_streak[entry.label] + 1 if not ok else 0
            if failed_streak[entry.label] >= MAX_FAILED_BATCHES:
                first = next(r.error for r in rows if r.error)
                raise RunAborted(
                    f"defense {entry.label} failed on every sample of {MAX_FAILED_BATCHES} batches in a row "
                    f"(last: {first}); fix the cause and re-run with --retry-errors"
                )
    return {"generated": generated, "errors": errors, "units": n_units, "wall_s": time.perf_counter() - t0}


__all__ = ["MAX_FAILED_BATCHES", "RunAborted", "answer_units", "error_text", "generate_rows"]
