"""The steps of a run around generation: the folder lock, the test pause, model facts and placement,
scoring, warm-up, and rank 0's bookkeeping before and after the ranks generate (see
:mod:`vlmshield.eval.runner`).

Example:
    >>> with lock_run_dir(Path("runs/x")):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlmshield.errors import ModelLoadError, UserInputError
from vlmshield.eval import distributed, shards
from vlmshield.eval import manifest as mf
from vlmshield.eval.judging import judge_pending
from vlmshield.eval.plan import EvalConfig, EvalPlan
from vlmshield.eval.store import RunStore

PAUSE_ENV = "VLMSHIELD_TEST_PAUSE_AFTER_BATCHES"
PAUSE_SECONDS_ENV = "VLMSHIELD_TEST_PAUSE_SECONDS"
PAUSE_RANK_ENV = "VLMSHIELD_TEST_PAUSE_RANK"
FAIL_LOAD_RANK_ENV = "VLMSHIELD_TEST_FAIL_LOAD_RANK"


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
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


def maybe_pause(units: int, rank: int = 0) -> None:
    """The testing hook (see :mod:`vlmshield.eval.runner`): after unit ``units`` of ``rank``, announce the
    pause with this process's pid and sleep, so a test can kill the process there."""
    raw = os.environ.get(PAUSE_ENV)
    if not raw:
        return
    try:
        target = int(raw)
        only = os.environ.get(PAUSE_RANK_ENV)
        if only not in (None, "") and int(only) != rank:
            return
    except ValueError:
        return
    if units == target:
        print(
            f"vlmshield-test: paused after {units} batches (rank {rank}, pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "600")))


def maybe_fail_loading(rank: int) -> None:
    """The second testing hook (see :mod:`vlmshield.eval.runner`): loading the model fails on rank
    ``$VLMSHIELD_TEST_FAIL_LOAD_RANK``, as a rank out of memory or missing a file would."""
    raw = os.environ.get(FAIL_LOAD_RANK_ENV)
    if raw not in (None, "") and raw.strip() == str(rank):
        raise ModelLoadError(f"vlmshield-test: loading failed on rank {rank} ({FAIL_LOAD_RANK_ENV})")


def raise_load_errors(outcomes: Sequence[str | None] | None, world_size: int) -> None:
    """Rank 0: stop the run when another rank could not load the model or its judges (``outcomes``:
    each rank's error message or None, in rank order, as gathered after loading)."""
    failed = [(rank, text) for rank, text in enumerate(outcomes or []) if text is not None]
    if failed:
        rank, text = failed[0]
        more = f" (and {len(failed) - 1} other ranks)" if len(failed) > 1 else ""
        raise ModelLoadError(f"rank {rank} of {world_size} could not load the model{more}: {text}")


def model_facts(vlm: Any) -> dict[str, Any]:
    """Revision, dtype, device, family (and where it runs) of the loaded model, for the manifest."""
    if getattr(vlm, "is_remote", False):
        served = vlm.served()
        return {
            "revision": None,
            "dtype": None,
            "device": "remote",
            "family": None,
            "extra": {"endpoint": vlm.endpoint, "served": served},
        }
    extra: dict[str, Any] = {}
    return {
        "revision": mf.model_revision(vlm),
        "dtype": str(vlm.dtype).removeprefix("torch."),
        "device": str(vlm.device),
        "family": getattr(vlm, "family", None),
        "extra": extra,
    }


def score_fn(plan: EvalPlan) -> Callable[[Any, str], float | None]:
    """``score(sample, text)``: the benchmark's judge-free score of a utility sample's answer, else None."""

    def score(sample: Any, text: str) -> float | None:
        if sample.label != "utility":
            return None
        try:
            value = plan.sample_benchmark[sample.id].benchmark.score(sample, text)
        except Exception:
            return None
        return None if value is None else float(value)

    return score


#: New tokens of the warm-up generation: one prefill at the first batch's shape and a few cached decode
#: steps meet every one-time cost; more tokens only repeat steady-state decode steps (64 made the warm-up
#: of ``vlmshield eval`` with no arguments 12 s on 2 CPU cores, 4 makes it about 1.5 s).
WARM_UP_NEW_TOKENS = 4


def warm_up(vlm: Any, samples: Sequence[Any], max_new_tokens: int) -> None:
    """One unrecorded generation on the first batch (at most :data:`WARM_UP_NEW_TOKENS` new tokens) so
    that one-time start-up costs (kernel selection, lazy initialisation, allocator growth) do not land on
    the first defense's wall time and skew the cost comparison. A remote model is not warmed up."""
    from vlmshield.generation import GenerationConfig

    if getattr(vlm, "is_remote", False):
        return
    config = GenerationConfig(max_new_tokens=min(max_new_tokens, WARM_UP_NEW_TOKENS))
    with contextlib.suppress(Exception):  # a failing sample fails (and is recorded) in the run itself
        vlm.generate([s.to_conversation() for s in samples], config)


def prompt_lengths(vlm: Any, samples: Sequence[Any], chunk: int = 16) -> dict[str, int] | None:
    """Prompt tokens of each sample as ``vlm``'s processor encodes it (chat template and image tokens
    included), for the ``length`` order; ``None`` for a model without ``encode`` (a remote one). A
    sample that cannot be encoded (an unreadable image, too many images) is left out: it goes last."""
    encode = getattr(vlm, "encode", None)
    if not callable(encode):
        return None
    out: dict[str, int] = {}

    def measure(part: Sequence[Any]) -> None:
        try:
            mask = encode([s.to_conversation() for s in part])["attention_mask"]
        except Exception:
            if len(part) > 1:
                for s in part:
                    measure([s])
            return
        for s, n in zip(part, mask.sum(dim=1).tolist(), strict=True):
            out[s.id] = int(n)

    for i in range(0, len(samples), chunk):
        measure(samples[i : i + chunk])
    return out


def placement(cfg: EvalConfig) -> Any:
    """Where this rank's copy of a local model goes (:func:`~vlmshield.eval.scale.placement_for_rank`)."""
    import torch

    from vlmshield.eval.scale import placement_for_rank

    ctx = distributed.current()
    return placement_for_rank(
        cfg.scale,
        cfg.device,
        local_rank=ctx.local_rank,
        local_world_size=ctx.local_world_size,
        world_size=ctx.world_size,
        cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        free_bytes=lambda i: int(torch.cuda.mem_get_info(i)[0]),
    )


def merge_parts(
    plan: EvalPlan, store: RunStore, out_dir: Path, batches: Sequence[Sequence[Any]]
) -> shards.MergeResult:
    """:func:`vlmshield.eval.shards.merge_parts` in the run's defense, judge and batch order."""
    position = {s.id: i for i, s in enumerate(s for batch in batches for s in batch)}
    return shards.merge_parts(
        store,
        out_dir,
        defense_order=[d.label for d in plan.defenses],
        judge_order=[j.label for j in plan.judges],
        position=position,
    )


def prepare_store(
    plan: EvalPlan,
    store: RunStore,
    judges: Sequence[tuple[str, Any]],
    batches: Sequence[Sequence[Any]],
    out_dir: Path,
    say: Callable[[str], None],
) -> tuple[list[shards.Unit], int]:
    """Rank 0, before any rank generates: samples recorded, part files of a killed run folded in,
    failures cleared for ``--retry-errors``, left-over answers judged; returns the units left and how
    many (defense, sample) pairs were already done."""
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
    merged = merge_parts(plan, store, out_dir, batches)
    if merged.files:
        say(
            f"resuming: {merged.generations} answers and {merged.verdicts} verdicts from {merged.files} rank files"
        )
    if plan.config.retry_errors:
        n_gen, n_ver = store.delete_generation_errors(), store.delete_verdict_errors()
        if n_gen or n_ver:
            say(f"retrying {n_gen} failed generations and {n_ver} failed verdicts")
    judge_pending(store, judges, {s.id: s.images for s in plan.samples})  # left over by an interrupted run
    done = store.done_pairs()
    labels = [d.label for d in plan.defenses]
    done_before = sum(1 for d in labels for s in plan.samples if (d, s.id) in done)
    return shards.pending_units(batches, labels, done), done_before


__all__ = [
    "FAIL_LOAD_RANK_ENV",
    "PAUSE_ENV",
    "PAUSE_RANK_ENV",
    "PAUSE_SECONDS_ENV",
    "lock_run_dir",
    "maybe_fail_loading",
    "maybe_pause",
    "merge_parts",
    "model_facts",
    "placement",
    "prepare_store",
    "prompt_lengths",
    "raise_load_errors",
    "score_fn",
    "warm_up",
]
