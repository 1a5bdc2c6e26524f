"""Judging in a run: build the judges, judge rows (a failing chunk retried item by item), and judge what
an interrupted run left unjudged.

API judges (``backend=openai``) get the run's ``judge_concurrency`` and ``judge_rate_limit``
(:class:`~vlmshield.eval.scale.ScaleOptions`): totals for the run, so each of N ranks gets 1/N of
them. A judge spec's own ``concurrency=`` wins over ``judge_concurrency``.

Example:
    >>> judges = build_judges(plan, vlm)  # doctest: +SKIP
    >>> judge_pending(store, judges)  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlmshield.eval.store import RunStore, VerdictRow

JUDGE_CHUNK = 64
DEFAULT_JUDGE_CONCURRENCY = 8


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def judge_rows(judge: Any, label: str, rows: Sequence[Mapping[str, Any]]) -> list[VerdictRow]:
    """Judge ``rows`` (dicts with defense, sample_id, text, query, category, answer and optionally the
    sample's images, which judges that see images are sent); a failing chunk is retried item by item
    and an item that still fails gets an error row."""
    from vlmshield.judges import JudgeItem

    def item(r: Mapping[str, Any]) -> Any:
        return JudgeItem(
            r["query"],
            r["text"] or "",
            category=r["category"],
            reference=r["answer"],
            images=tuple(r.get("images") or ()),
        )

    try:
        verdicts = judge.judge([item(r) for r in rows])
        if len(verdicts) != len(rows):
            raise RuntimeError(f"judge {label} returned {len(verdicts)} verdicts for {len(rows)} items")
    except Exception as e:
        if len(rows) == 1:
            r = rows[0]
            return [VerdictRow(r["defense"], r["sample_id"], label, error=_error_text(e))]
        out: list[VerdictRow] = []
        for r in rows:
            out.extend(judge_rows(judge, label, [r]))
        return out
    return [
        VerdictRow(r["defense"], r["sample_id"], label, verdict=v.to_dict())
        for r, v in zip(rows, verdicts, strict=True)
    ]


def judge_and_store(
    store: RunStore, judges: Sequence[tuple[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Judge ``rows`` with every judge, one transaction per chunk of :data:`JUDGE_CHUNK`."""
    for label, judge in judges:
        for start in range(0, len(rows), JUDGE_CHUNK):
            store.add_verdicts(judge_rows(judge, label, rows[start : start + JUDGE_CHUNK]))


def judge_pending(
    store: RunStore,
    judges: Sequence[tuple[str, Any]],
    images_of: Mapping[str, Sequence[Any]] | None = None,
) -> int:
    """Judge every error-free generation that lacks a verdict from one of ``judges``; returns how many
    verdicts were written. ``images_of`` (sample id -> images) gives resumed rows their sample's
    images, as fresh rows have them."""
    n = 0
    for label, judge in judges:
        rows = store.pending_judgements(label)
        if images_of is not None:
            rows = [{**r, "images": tuple(images_of.get(r["sample_id"], ()))} for r in rows]
        judge_and_store(store, [(label, judge)], rows)
        n += len(rows)
    return n


def build_judges(plan: Any, vlm: Any, *, world_size: int = 1) -> list[tuple[str, Any]]:
    """``(label, judge)`` for each judge of ``plan``; a local judge of the evaluated model reuses ``vlm``."""
    from vlmshield.judges import build_judge, default_backend_factory

    scale = plan.config.scale

    def factory(kind: str, model: str, options: Mapping[str, str]) -> Any:
        if kind == "local" and model == plan.config.model:
            return vlm  # judge with the evaluated model itself: no second copy in memory
        backend = default_backend_factory(kind, model, options)  # checks the options
        if kind != "openai":
            return backend
        from vlmshield.backends.openai_compat import OpenAIChatBackend

        assert isinstance(backend, OpenAIChatBackend)
        if "concurrency" in options:
            concurrency = backend.max_concurrency
        else:
            concurrency = max(1, (scale.judge_concurrency or DEFAULT_JUDGE_CONCURRENCY) // world_size)
        rate = scale.judge_rate_limit / world_size if scale.judge_rate_limit else None
        return OpenAIChatBackend(
            backend.base_url,
            model=model,
            max_concurrency=concurrency,
            timeout_s=backend.timeout_s,
            max_retries=backend.max_retries,
            backoff_s=backend.backoff_s,
            extra_body=backend.extra_body,
            max_requests_per_s=rate,
        )

    return [(j.label, build_judge(j.spec_text, backend_factory=factory)) for j in plan.judges]


__all__ = ["JUDGE_CHUNK", "build_judges", "judge_and_store", "judge_pending", "judge_rows"]
