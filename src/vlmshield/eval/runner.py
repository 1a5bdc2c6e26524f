"""The evaluation runner: every defense on the same samples, in the same order, resumable.

How a run goes (:func:`run_eval`):

1. :func:`~vlmshield.eval.plan.build_plan` checks every name and argument and loads the benchmarks;
   nothing heavy happens before that succeeds.
2. The run folder is locked (one runner per folder) and an existing manifest is compared with the new
   settings: a run with different results-deciding settings is refused with a one-line error.
3. The model is loaded, the manifest written, the judges built.
4. Batches are fixed chunks of the ordered sample list. For each batch, each defense answers the
   samples it has not answered yet; the rows are written in one transaction, then judged by every
   judge (another transaction). A failing batch is retried sample by sample, so one bad sample gets
   an error row and the others are answered; the run goes on.
5. Generations left unjudged by an interrupted run are judged first on the next run; the summary,
   ``summary.json``, ``report.md`` and the plots are written at the end.

Decoding is greedy and batches never depend on what was done before, so a run that is killed
(even with SIGKILL) and re-run produces exactly the rows of an uninterrupted run, none twice.

Testing hook: with ``VLMSHIELD_TEST_PAUSE_AFTER_BATCHES=N`` the runner, after writing its N-th
(batch, defense) generation unit and *before* judging it, prints ``vlmshield-test: paused after N
batches`` on stderr and sleeps ``VLMSHIELD_TEST_PAUSE_SECONDS`` (default 600) so a test can kill it.

Example:
    >>> from vlmshield.eval import EvalConfig, run_eval
    >>> result = run_eval(EvalConfig(model="ckpt/tiny-llava", limit=16, max_new_tokens=16))  # doctest: +SKIP
    >>> result.summary["defenses"]["coca"]["unsafe_rate"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError, VlmshieldError
from vlmshield.eval import manifest as mf
from vlmshield.eval.plan import DefenseEntry, EvalConfig, EvalPlan, build_plan, default_output_dir
from vlmshield.eval.store import DB_NAME, GenerationRow, RunStore, VerdictRow

PAUSE_ENV = "VLMSHIELD_TEST_PAUSE_AFTER_BATCHES"
PAUSE_SECONDS_ENV = "VLMSHIELD_TEST_PAUSE_SECONDS"
#: A defense that fails on every sample of this many consecutive batches stops the run.
MAX_FAILED_BATCHES = 5
JUDGE_CHUNK = 64


class RunAborted(VlmshieldError):
    """A defense or judge failed on everything it was given, batch after batch."""


@dataclass
class RunResult:
    """What :func:`run_eval` returns."""

    output_dir: Path
    summary: dict[str, Any]
    report_path: Path | None
    generated: int
    already_done: int
    errors: int
    wall_time_s: float
    plots: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- helpers


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@contextlib.contextmanager
def _lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``run_dir/.lock`` for the whole run (released by the OS on any exit)."""
    path = run_dir / ".lock"
    f = path.open("a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserInputError(
                f"another `vlmshield eval` is writing to {run_dir}; wait for it or pass another --output-dir"
            ) from None
        yield
    finally:
        f.close()


def _maybe_pause(units: int) -> None:
    raw = os.environ.get(PAUSE_ENV)
    if not raw:
        return
    try:
        target = int(raw)
    except ValueError:
        return
    if units == target:
        print(f"vlmshield-test: paused after {units} batches", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "600")))


def _progress(enabled: bool, console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- it/s" if speed is None else f"{speed:.2f} it/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


# ------------------------------------------------------------------------------------- generation


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
                    error=_error_text(e),
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


# ----------------------------------------------------------------------------------------- judging


def judge_rows(judge: Any, label: str, rows: Sequence[Mapping[str, Any]]) -> list[VerdictRow]:
    """Judge ``rows`` (dicts with defense, sample_id, text, query, category, answer); a failing chunk is
    retried item by item and an item that still fails gets an error row."""
    from vlmshield.judges import JudgeItem

    def item(r: Mapping[str, Any]) -> Any:
        return JudgeItem(r["query"], r["text"] or "", category=r["category"], reference=r["answer"])

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


def _judge_and_store(
    store: RunStore, judges: Sequence[tuple[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> None:
    for label, judge in judges:
        for start in range(0, len(rows), JUDGE_CHUNK):
            store.add_verdicts(judge_rows(judge, label, rows[start : start + JUDGE_CHUNK]))


def judge_pending(store: RunStore, judges: Sequence[tuple[str, Any]]) -> int:
    """Judge every error-free generation that lacks a verdict from one of ``judges``; returns how many
    verdicts were written."""
    n = 0
    for label, judge in judges:
        rows = store.pending_judgements(label)
        _judge_and_store(store, [(label, judge)], rows)
        n += len(rows)
    return n


# ------------------------------------------------------------------------------------------ manifest


def _identity(plan: EvalPlan, model_revision: str | None, dtype: str | None) -> dict[str, Any]:
    cfg = plan.config
    return {
        "model": {"name": cfg.model, "revision": model_revision, "dtype": dtype},
        "generation": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": False,
            "batch_size": cfg.batch_size,
        },
        "seed": cfg.seed,
        "defense_order": [d.label for d in plan.defenses],
        "defenses": {d.label: d.spec() for d in plan.defenses},
        "benchmarks": {
            b.request.label: {
                "variant": b.variant,
                "checksum": b.checksum,
                "selection_checksum": b.selection_checksum,
            }
            for b in plan.benchmarks
        },
        "samples": {"count": len(plan.samples), "ids_sha256": plan.sample_ids_sha256()},
    }


def build_manifest(
    plan: EvalPlan, *, model_revision: str | None, dtype: str | None, device: str | None, family: str | None
) -> dict[str, Any]:
    cfg = plan.config
    return {
        "schema": mf.SCHEMA,
        "created": mf.now_iso(),
        "versions": mf.versions(),
        "identity": _identity(plan, model_revision, dtype),
        "model": {
            "name": cfg.model,
            "revision": model_revision,
            "requested_revision": cfg.revision,
            "family": family,
            "dtype": dtype,
            "device": device,
        },
        "seeds": {"seed": cfg.seed, "limit_selection": cfg.seed, "bootstrap": cfg.seed},
        "bootstrap": {"resamples": cfg.bootstrap_resamples, "level": 0.95, "method": "percentile"},
        "limit": cfg.limit,
        "generation": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": False,
            "batch_size": cfg.batch_size,
        },
        "defenses": [
            {
                "label": d.label,
                "spec_text": d.spec_text,
                "spec": d.spec(),
                "spec_sha256": mf.sha256_json(d.spec()),
            }
            for d in plan.defenses
        ],
        "judges": [
            {
                "label": j.label,
                "spec_text": j.spec_text,
                "spec": j.checked_spec,
                "spec_sha256": mf.sha256_json(j.checked_spec),
            }
            for j in plan.judges
        ],
        "benchmarks": [b.manifest() for b in plan.benchmarks],
        "samples": {"count": len(plan.samples), "ids_sha256": plan.sample_ids_sha256()},
        "invocations": [],
        "status": "running",
    }


def _merge_manifest(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` keeping ``old``'s creation time, invocations and judges no longer requested."""
    if old is None:
        return new
    merged = dict(new)
    merged["created"] = old.get("created", new["created"])
    merged["invocations"] = list(old.get("invocations", []))
    labels = {j["label"] for j in new["judges"]}
    merged["judges"] = new["judges"] + [j for j in old.get("judges", []) if j["label"] not in labels]
    return merged


# -------------------------------------------------------------------------------------------- runner


def _load_model(cfg: EvalConfig) -> Any:
    from vlmshield.models import load_vlm

    return load_vlm(cfg.model, device=cfg.device, dtype=cfg.dtype, revision=cfg.revision)


def _build_judges(plan: EvalPlan, vlm: Any) -> list[tuple[str, Any]]:
    from vlmshield.judges import build_judge, default_backend_factory

    def factory(kind: str, model: str, options: Mapping[str, str]) -> Any:
        if kind == "local" and model == plan.config.model:
            return vlm  # judge with the evaluated model itself: no second copy in memory
        return default_backend_factory(kind, model, options)

    return [(j.label, build_judge(j.spec_text, backend_factory=factory)) for j in plan.judges]


def _score_fn(plan: EvalPlan) -> Callable[[Any, str], float | None]:
    def score(sample: Any, text: str) -> float | None:
        if sample.label != "utility":
            return None
        try:
            value = plan.sample_benchmark[sample.id].benchmark.score(sample, text)
        except Exception:
            return None
        return None if value is None else float(value)

    return score


def run_eval(
    config: EvalConfig,
    *,
    vlm: Any = None,
    progress: bool = True,
    console: Any = None,
    write_report: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run (or resume) an evaluation; see the module docstring.

    Args:
        config: the settings (:class:`~vlmshield.eval.plan.EvalConfig`).
        vlm: an already loaded model to use instead of loading ``config.model`` (its name must still
            be ``config.model``'s, as it is recorded in the manifest).
        progress: show a progress bar (rich) on ``console`` (default: stderr).
        write_report: write ``report.md`` and the plots at the end.
        log: where one-line notes go (default: stderr).
    """
    t_start = time.perf_counter()
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    plan = build_plan(config)
    for b in plan.benchmarks:
        for note in b.notes():  # warnings and samples lost per file
            say(note)
    out_dir = Path(config.output_dir) if config.output_dir is not None else default_output_dir(config)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"--output-dir {out_dir} is a file; pass a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    with _lock(out_dir):
        old = mf.read_manifest(out_dir)
        draft = build_manifest(plan, model_revision=None, dtype=None, device=None, family=None)
        if old is not None:  # fail before loading the model
            mf.check_resumable(old, draft, out_dir, skip=("model.revision", "model.dtype"))
        if vlm is None:
            vlm = _load_model(config)
        revision = mf.model_revision(vlm)
        dtype = str(vlm.dtype).removeprefix("torch.")
        manifest = build_manifest(
            plan,
            model_revision=revision,
            dtype=dtype,
            device=str(vlm.device),
            family=getattr(vlm, "family", None),
        )
        if old is not None:
            mf.check_resumable(old, manifest, out_dir)
        manifest = _merge_manifest(old, manifest)
        manifest["invocations"].append(
            {
                "command": config.command or mf.command_line(),
                "started": mf.now_iso(),
                "resumed": old is not None,
            }
        )
        mf.write_manifest(out_dir, manifest)

        store = RunStore(out_dir / DB_NAME)
        try:
            generated, done_before, errors = _run(
                plan, vlm, store, progress=progress, console=console, say=say
            )
            counts = store.counts()
        finally:
            store.close()
            for entry in plan.defenses:  # e.g. ECSO's HTTP client for a remote backend
                close = getattr(entry.defense, "close", None)
                if callable(close):
                    with contextlib.suppress(Exception):
                        close()
        manifest["status"] = "complete"
        manifest["finished"] = mf.now_iso()
        manifest["invocations"][-1]["finished"] = manifest["finished"]
        manifest["invocations"][-1]["generated"] = generated
        manifest["counts"] = counts
        mf.write_manifest(out_dir, manifest)

        from vlmshield.eval import report as _report

        summary = _report.summarize_run(out_dir)
        report_path: Path | None = None
        plots: list[Path] = []
        if write_report:
            files = _report.write_report(out_dir, summary=summary)
            report_path, plots = files.markdown, files.plots
    return RunResult(
        output_dir=out_dir,
        summary=summary,
        report_path=report_path,
        generated=generated,
        already_done=done_before,
        errors=errors,
        wall_time_s=time.perf_counter() - t_start,
        plots=plots,
    )


def _warm_up(vlm: Any, samples: Sequence[Any], max_new_tokens: int) -> None:
    """One unrecorded generation on the first batch (at most 64 new tokens) so that one-time start-up
    costs (kernel selection, lazy initialisation, allocator growth) do not land on the first defense's
    wall time and skew the cost comparison."""
    from vlmshield.generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=min(max_new_tokens, 64))
    with contextlib.suppress(Exception):  # a failing sample fails (and is recorded) in the run itself
        vlm.generate([s.to_conversation() for s in samples], config)


def _run(
    plan: EvalPlan, vlm: Any, store: RunStore, *, progress: bool, console: Any, say: Callable[[str], None]
) -> tuple[int, int, int]:
    from rich.console import Console

    from vlmshield.generation import GenerationConfig

    cfg = plan.config
    store.put_samples(
        [
            {
                "idx": i,
                "sample_id": s.id,
                "benchmark": s.benchmark,
                "category": s.category,
                "label": s.label,
                "query": s.query,
                "answer": s.answer,
                "num_images": len(s.images),
            }
            for i, s in enumerate(plan.samples)
        ]
    )
    if cfg.retry_errors:
        n_gen, n_ver = store.delete_generation_errors(), store.delete_verdict_errors()
        if n_gen or n_ver:
            say(f"retrying {n_gen} failed generations and {n_ver} failed verdicts")
    judges = _build_judges(plan, vlm)
    judge_pending(store, judges)  # left over by an interrupted run

    index = {s.id: i for i, s in enumerate(plan.samples)}
    by_id = {s.id: s for s in plan.samples}
    done = store.done_pairs()
    total = len(plan.samples) * len(plan.defenses)
    done_before = sum(1 for d in plan.defenses for s in plan.samples if (d.label, s.id) in done)
    gen_config = GenerationConfig(max_new_tokens=cfg.max_new_tokens)
    score = _score_fn(plan)
    failed_streak = {d.label: 0 for d in plan.defenses}
    generated = errors = units = 0
    if done_before < total:
        _warm_up(vlm, plan.batches()[0], cfg.max_new_tokens)
    bar = _progress(progress, console or Console(stderr=True))
    with bar:
        task = bar.add_task("eval", total=total, completed=done_before)
        for b, batch in enumerate(plan.batches()):
            for entry in plan.defenses:
                todo = [s for s in batch if (entry.label, s.id) not in done]
                if not todo:
                    continue
                bar.update(task, description=f"{entry.label}")
                rows = generate_rows(entry, vlm, todo, gen_config, batch=b, index=index, score=score)
                store.add_generations(rows)
                units += 1
                generated += len(rows)
                n_err = sum(1 for r in rows if r.error is not None)
                errors += n_err
                _maybe_pause(units)
                ok = [r for r in rows if r.error is None]
                _judge_and_store(
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
    judge_pending(store, judges)
    if errors:
        say(f"{errors} samples failed (recorded with their error; re-run with --retry-errors to try again)")
    return generated, done_before, errors


__all__ = [
    "MAX_FAILED_BATCHES",
    "PAUSE_ENV",
    "PAUSE_SECONDS_ENV",
    "RunAborted",
    "RunResult",
    "generate_rows",
    "judge_pending",
    "judge_rows",
    "run_eval",
]
