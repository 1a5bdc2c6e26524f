"""The evaluation runner: every defense on the same samples, in the same batches, resumable, on one
process or on many (``torchrun`` / ``accelerate launch``).

How a run goes (:func:`run_eval`):

1. :func:`~vlmshield.eval.plan.build_plan` checks every name and argument and loads the benchmarks;
   nothing heavy happens before that succeeds.
2. Rank 0 locks the run folder (one runner per folder) and compares an existing manifest with the new
   settings: a run with different results-deciding settings is refused with a one-line error.
3. Every rank loads the model (or connects to the remote one) and builds the judges; rank 0 writes the
   manifest, folds in the part files a killed multi-rank run left, and lists the units left to do
   (:mod:`vlmshield.eval.shards`: batches are fixed chunks of the length-sorted sample list). A rank
   that could not load the model or its judges tells rank 0, which stops every rank, naming it.
4. Each rank answers its units (:mod:`vlmshield.eval.answering`; all units of a batch on one rank):
   for each (batch, defense) the rows are written in one transaction, then judged by every judge
   (another transaction). A failing batch
   is retried sample by sample, so one bad sample gets an error row and the others are answered.
   One process writes ``results.sqlite`` itself; under a launcher each rank writes its own part file.
5. Rank 0 folds the part files into ``results.sqlite``, judges what is unjudged, and writes the
   summary, ``summary.json``, ``report.md`` and the plots, as one process does.

Decoding is greedy and batches never depend on what was done before, nor on the number of ranks, so a
run that is killed (even with SIGKILL, any rank) and re-run, with any number of ranks, produces exactly
the rows of an uninterrupted single-process run, none twice.

Testing hook: with ``VLMSHIELD_TEST_PAUSE_AFTER_BATCHES=N`` the runner, after writing its N-th
(batch, defense) generation unit and *before* judging it, prints ``vlmshield-test: paused after N
batches (rank R, pid P)`` on stderr and sleeps ``VLMSHIELD_TEST_PAUSE_SECONDS`` (default 600) so a test
can kill it; ``VLMSHIELD_TEST_PAUSE_RANK=R`` pauses only rank R. With
``VLMSHIELD_TEST_FAIL_LOAD_RANK=R`` loading the model fails on rank R (a test that one rank's load
error stops every rank at once, with rank 0 naming it, instead of leaving rank 0 waiting).

Example:
    >>> from vlmshield.eval import EvalConfig, run_eval
    >>> result = run_eval(EvalConfig(model="ckpt/tiny-llava", limit=16, max_new_tokens=16))  # doctest: +SKIP
    >>> result.summary["defenses"]["coca"]["unsafe_rate"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError, VlmshieldError
from vlmshield.eval import distributed, shards, steps
from vlmshield.eval import manifest as mf
from vlmshield.eval.answering import MAX_FAILED_BATCHES, RunAborted, answer_units, error_text, generate_rows
from vlmshield.eval.judging import JUDGE_CHUNK, build_judges, judge_pending, judge_rows
from vlmshield.eval.plan import EvalConfig, EvalPlan, build_plan, default_output_dir
from vlmshield.eval.steps import PAUSE_ENV, PAUSE_RANK_ENV, PAUSE_SECONDS_ENV
from vlmshield.eval.store import DB_NAME, RunStore


@dataclass
class RunResult:
    """What :func:`run_eval` returns (on ranks other than 0 of a multi-rank run: counts only, an empty
    ``summary`` and no report)."""

    output_dir: Path
    summary: dict[str, Any]
    report_path: Path | None
    generated: int
    already_done: int
    errors: int
    wall_time_s: float
    plots: list[Path] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1


# ----------------------------------------------------------------------------------------- helpers


def _user_text(e: BaseException) -> str:
    """What a user reads of ``e``: our own errors' one-line message, others with their type."""
    return str(e) if isinstance(e, VlmshieldError) else error_text(e)


# -------------------------------------------------------------------------------------------- model


def _load_model(cfg: EvalConfig) -> Any:
    """The evaluated model of this rank: a remote endpoint (its share of the request limits), or a
    checkpoint on this rank's device or GPUs (:func:`~vlmshield.eval.steps.placement`)."""
    from vlmshield.backends.remote_model import RemoteModel, is_remote_model, parse_remote_model

    steps.maybe_fail_loading(distributed.current().rank)
    s = cfg.scale
    if is_remote_model(cfg.model):
        world = distributed.current().world_size
        rate = s.rate_limit / world if s.rate_limit else None
        spec = parse_remote_model(
            cfg.model, s.base_url, max_concurrency=max(1, s.concurrency // world), max_requests_per_s=rate
        )
        return RemoteModel(spec)
    from vlmshield.models import load_vlm

    where = steps.placement(cfg)
    vlm = load_vlm(
        cfg.model,
        device=where.device,
        dtype=cfg.dtype,
        revision=cfg.revision,
        device_map=where.device_map,
        max_memory=where.max_memory,
        offload_folder=s.offload_folder,
    )
    if str(vlm.device) == "meta":  # the inputs would go to the first weights' device: none
        raise UserInputError(
            f"--device-map put the first layers of {cfg.model} on disk; raise --max-memory (GPU or cpu=SIZE) "
            "so that at least the embeddings stay in memory"
        )
    return vlm


# -------------------------------------------------------------------------------------------- runner


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

    Under ``torchrun`` / ``accelerate launch`` every rank calls this with the same ``config``; rank 0
    returns the summary, the others their counts.

    Args:
        config: the settings (:class:`~vlmshield.eval.plan.EvalConfig`).
        vlm: an already loaded model to use instead of loading ``config.model`` (its name must still
            be ``config.model``'s, as it is recorded in the manifest).
        progress: show a progress bar (rich) on ``console`` (default: stderr); rank 0 only.
        write_report: write ``report.md`` and the plots at the end.
        log: where one-line notes go (default: stderr); rank 0 only.
    """
    t_start = time.perf_counter()
    ctx = distributed.context(config.scale.dist_timeout_s)
    try:
        return _run_eval(config, ctx, vlm, progress, console, write_report, log, t_start)
    finally:
        distributed.release()


def _run_eval(
    config: EvalConfig,
    ctx: distributed.DistContext,
    vlm: Any,
    progress: bool,
    console: Any,
    write_report: bool,
    log: Callable[[str], None] | None,
    t_start: float,
) -> RunResult:
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not ctx.is_main:
        say = lambda msg: None  # noqa: E731 - rank 0 speaks for the run
    plan = build_plan(config)  # every rank checks the same arguments (rank 0 alone prints the error)
    for b in plan.benchmarks:
        for note in b.notes():  # warnings and samples lost per file
            say(note)
    out_dir = Path(config.output_dir) if config.output_dir is not None else default_output_dir(config)
    try:
        with contextlib.ExitStack() as stack:
            return _locked_run(plan, ctx, stack, out_dir, vlm, progress, console, write_report, say, t_start)
    finally:
        for entry in plan.defenses:  # e.g. ECSO's HTTP client for a remote backend
            close = getattr(entry.defense, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()


def _main_step(ctx: distributed.DistContext, what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result to every rank; an error on rank 0 stops them all (the
    other ranks raise :class:`~vlmshield.eval.distributed.StoppedByMain`)."""
    result: Any = None
    if ctx.is_main:
        try:
            result = ("ok", fn())
        except Exception as e:
            if ctx.distributed:
                message = _user_text(e)
                with contextlib.suppress(VlmshieldError):
                    ctx.broadcast(("error", message), what)
            raise
    result = ctx.broadcast(result, what)
    if result[0] == "error":
        raise distributed.StoppedByMain(result[1])
    return result[1]


def _locked_run(
    plan: EvalPlan,
    ctx: distributed.DistContext,
    stack: contextlib.ExitStack,
    out_dir: Path,
    vlm: Any,
    progress: bool,
    console: Any,
    write_report: bool,
    say: Callable[[str], None],
    t_start: float,
) -> RunResult:
    config = plan.config

    def check_before_loading() -> tuple[str, str]:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserInputError(f"--output-dir {out_dir} is a file; pass a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(steps.lock_run_dir(out_dir))  # held by rank 0 until the run ends
        old = mf.read_manifest(out_dir)
        order = config.scale.order or mf.recorded_order(old) or "length"
        if old is not None:  # fail before loading the model
            draft = mf.build_manifest(
                plan, order=order, model_revision=None, dtype=None, device=None, family=None
            )
            mf.check_resumable(mf.with_order(old), draft, out_dir, skip=("model.revision", "model.dtype"))
        return order, str(out_dir.resolve())

    order, run_dir = _main_step(ctx, "checking the run folder", check_before_loading)
    out_dir = Path(run_dir)
    loaded_here = vlm is None
    load_error: Exception | None = None
    judges: list[tuple[str, Any]] = []
    try:
        if vlm is None:
            vlm = _load_model(config)
        judges = build_judges(plan, vlm, world_size=ctx.world_size)
    except Exception as e:
        load_error = e  # rank 0 hears of it below and stops every rank in the next step
    # every rank tells rank 0 how loading went: a rank that raised here would leave rank 0 waiting in
    # the next broadcast until the gloo timeout
    load_outcomes = ctx.gather(
        None if load_error is None else _user_text(load_error), "loading the model on every rank"
    )
    batches: list[list[Any]] = []  # rank 0's; the other ranks get their units
    store: RunStore | None = None
    all_stats: list[dict[str, Any]] | None = None
    manifest: dict[str, Any] = {}

    def prepare() -> tuple[list[shards.Unit], int]:
        nonlocal store
        if load_error is not None:
            raise load_error
        steps.raise_load_errors(load_outcomes, ctx.world_size)
        facts = steps.model_facts(vlm)
        if loaded_here and not getattr(vlm, "is_remote", False):
            facts["extra"]["placement"] = steps.placement(config).describe()
        new = mf.build_manifest(
            plan,
            order=order,
            model_revision=facts["revision"],
            dtype=facts["dtype"],
            device=facts["device"],
            family=facts["family"],
            model_extra=facts["extra"],
        )
        old = mf.read_manifest(out_dir)
        if old is not None:
            mf.check_resumable(mf.with_order(old), new, out_dir)
        manifest.update(mf.merge_manifest(old, new))
        manifest["invocations"].append(
            {
                "command": config.command or mf.command_line(),
                "started": mf.now_iso(),
                "resumed": old is not None,
                "ranks": ctx.world_size,
            }
        )
        lengths = steps.prompt_lengths(vlm, plan.samples) if order == "length" else None
        batches.extend(plan.batches(order, lengths))
        manifest["generation"]["order_key"] = (
            None if order != "length" else "prompt tokens" if lengths is not None else "images, characters"
        )
        mf.write_manifest(out_dir, manifest)
        store = RunStore(out_dir / DB_NAME)
        return steps.prepare_store(plan, store, judges, batches, out_dir, say)

    try:
        units, done_before = _main_step(ctx, "listing the work left", prepare)
        mine = shards.assign(units, ctx.world_size, ctx.rank)
        own = RunStore(shards.part_path(out_dir, ctx.rank)) if ctx.distributed else store
        assert own is not None
        try:
            stats = answer_units(plan, vlm, own, judges, mine, ctx, done_before, progress, console)
        finally:
            if own is not store:
                own.close()
        stats["rank"] = ctx.rank
        all_stats = ctx.gather(stats, "waiting for the other ranks to finish their batches")
        if not ctx.is_main:
            return RunResult(
                out_dir,
                {},
                None,
                stats["generated"],
                done_before,
                stats["errors"],
                time.perf_counter() - t_start,
                rank=ctx.rank,
                world_size=ctx.world_size,
            )
        assert store is not None and all_stats is not None
        if ctx.distributed:
            steps.merge_parts(plan, store, out_dir, batches)
        judge_pending(store, judges, {x.id: x.images for x in plan.samples})
        counts = store.counts()
    finally:
        if store is not None:
            store.close()
    generated = sum(s["generated"] for s in all_stats)
    errors = sum(s["errors"] for s in all_stats)
    if errors:
        say(f"{errors} samples failed (recorded with their error; re-run with --retry-errors to try again)")
    manifest["status"] = "complete"
    manifest["finished"] = mf.now_iso()
    inv = manifest["invocations"][-1]
    inv.update(finished=manifest["finished"], generated=generated, ranks_stats=all_stats)
    inv["generation_wall_s"] = max(s["wall_s"] for s in all_stats)
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
        world_size=ctx.world_size,
    )


__all__ = [
    "JUDGE_CHUNK",
    "MAX_FAILED_BATCHES",
    "PAUSE_ENV",
    "PAUSE_RANK_ENV",
    "PAUSE_SECONDS_ENV",
    "RunAborted",
    "RunResult",
    "generate_rows",
    "judge_pending",
    "judge_rows",
    "run_eval",
]
