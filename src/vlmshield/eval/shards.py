"""The units of work of a run, which rank does which, and the per-rank result files.

- **Run order**: with ``order="length"`` the samples sorted by prompt length (ties keep the
  evaluation order), so a batch holds prompts of similar length and little padding: the prompt's
  token count as the model's processor encodes it (images included) when rank 0 measured it, else
  :func:`prompt_length_key` (number of images, then characters of the query; a remote model); with
  ``order="dataset"`` the evaluation order itself.
- **Batches**: fixed chunks of ``batch_size`` of the run order. Batch ``b`` is the same on every run,
  every resume and for any number of ranks, so the rows of a run do not depend on how many ranks made
  them (and a batch is answered by one model call whatever the placement).
- **Units**: a (batch, defense) pair with the samples of the batch that defense has not answered yet
  (:func:`pending_units`): what is left of a run, read from its database.
- **Assignment** (:func:`assign`): the batches with work left are dealt round robin: the k-th goes to
  rank ``k % N``. All units of a batch stay on one rank (every defense answers those samples on the
  same hardware, as the per-batch cost ratio to ``none`` assumes). A resume recomputes what is left
  from the database, so it neither loses nor repeats a sample whatever N was before.
- **Part files**: under a launcher each rank writes ``parts/rank-NNNNN.sqlite`` (a :class:`RunStore`:
  one transaction per unit, WAL), never another rank's; rank 0 folds them into ``results.sqlite``
  (:func:`merge_parts`) at the start of a run (what a killed run left) and at its end, in the order a
  single process would have written the rows, and deletes them once committed.

Example:
    >>> units = [Unit(b, "none", (f"s{b}",)) for b in range(5)]
    >>> [u.batch for u in assign(units, world_size=2, rank=1)]
    [1, 3]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmshield.eval.store import RunStore

PARTS_DIR = "parts"


def prompt_length_key(sample: Any) -> tuple[int, int]:
    """``(number of images, characters of the query)``: a model-free proxy of the prompt's length.

    Image tokens dominate a multimodal prompt (576 per image for LLaVA-1.5), so samples are grouped by
    image count first. Families whose image tokens grow with the image's size (Qwen2-VL) keep some
    padding between images of different sizes.
    """
    return (len(sample.images), len(sample.query))


def run_order(samples: Sequence[Any], order: str, lengths: Mapping[str, int] | None = None) -> list[Any]:
    """``samples`` in the order their batches are made (``length`` or ``dataset``); ``lengths`` (sample
    id -> prompt tokens) replaces :func:`prompt_length_key` for ``length``."""
    if order == "dataset":
        return list(samples)
    if order != "length":
        raise ValueError(f"unknown order {order!r}")
    if lengths is not None:
        ranked = sorted(range(len(samples)), key=lambda i: (lengths.get(samples[i].id, _LAST), i))
    else:
        ranked = sorted(range(len(samples)), key=lambda i: (*prompt_length_key(samples[i]), i))
    return [samples[i] for i in ranked]


_LAST = 1 << 62  # a sample whose prompt could not be encoded: it fails later, in the last batches


def make_batches(
    samples: Sequence[Any], batch_size: int, order: str, lengths: Mapping[str, int] | None = None
) -> list[list[Any]]:
    """Fixed chunks of ``batch_size`` of :func:`run_order`."""
    ordered = run_order(samples, order, lengths)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


@dataclass(frozen=True)
class Unit:
    """The samples of batch ``batch`` that defense ``defense`` still has to answer (in batch order)."""

    batch: int
    defense: str
    sample_ids: tuple[str, ...]


def pending_units(
    batches: Sequence[Sequence[Any]], defenses: Sequence[str], done: set[tuple[str, str]]
) -> list[Unit]:
    """Every (batch, defense) with samples not in ``done`` ((defense, sample id) pairs), batch by
    batch, defenses in run order."""
    out = []
    for b, batch in enumerate(batches):
        for d in defenses:
            todo = tuple(s.id for s in batch if (d, s.id) not in done)
            if todo:
                out.append(Unit(b, d, todo))
    return out


def assign(units: Sequence[Unit], world_size: int, rank: int) -> list[Unit]:
    """The units of ``rank``: the batches with work, dealt round robin, all units of a batch together."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    batches = sorted({u.batch for u in units})
    mine = {b for k, b in enumerate(batches) if k % world_size == rank}
    return [u for u in units if u.batch in mine]


def part_path(run_dir: Path, rank: int) -> Path:
    """``RUN/parts/rank-NNNNN.sqlite``."""
    return Path(run_dir) / PARTS_DIR / f"rank-{rank:05d}.sqlite"


def part_files(run_dir: Path) -> list[Path]:
    """The part files left in ``run_dir`` (any rank, any earlier number of ranks), sorted."""
    d = Path(run_dir) / PARTS_DIR
    return sorted(d.glob("rank-*.sqlite")) if d.is_dir() else []


@dataclass
class MergeResult:
    """What :func:`merge_parts` folded in."""

    files: int = 0
    generations: int = 0
    verdicts: int = 0


def merge_parts(
    store: RunStore,
    run_dir: Path,
    *,
    defense_order: Sequence[str],
    judge_order: Sequence[str],
    position: Mapping[str, int],
) -> MergeResult:
    """Fold every part file of ``run_dir`` into ``store`` in one transaction, then delete them.

    Rows are inserted in the order one process would have written them: by batch, defense (run order),
    judge, then the sample's ``position`` in the run order. A row already in ``store`` (a part merged
    just before a crash, before its deletion) is kept once. Only the caller (rank 0) may run this, and
    only while no rank writes a part.
    """
    files = part_files(run_dir)
    if not files:
        return MergeResult()
    d_pos = {d: i for i, d in enumerate(defense_order)}
    j_pos = {j: i for i, j in enumerate(judge_order)}
    far = len(position) + 1
    gens: list[tuple[Any, ...]] = []
    verdicts: list[tuple[Any, ...]] = []
    g_cols: list[str] = []
    v_cols: list[str] = []
    for f in files:
        with RunStore(f) as part:
            g_cols, g_rows = part.raw_rows("generations")
            v_cols, v_rows = part.raw_rows("verdicts")
            batch_of = {
                (r[g_cols.index("defense")], r[g_cols.index("sample_id")]): r[g_cols.index("batch")]
                for r in g_rows
            }
        gi = {c: i for i, c in enumerate(g_cols)}
        vi = {c: i for i, c in enumerate(v_cols)}
        for r in g_rows:
            gens.append(
                (r[gi["batch"]], d_pos.get(r[gi["defense"]], far), position.get(r[gi["sample_id"]], far), r)
            )
        for r in v_rows:
            key = (r[vi["defense"]], r[vi["sample_id"]])
            b = batch_of.get(key)
            verdicts.append(
                (
                    far if b is None else b,
                    d_pos.get(key[0], far),
                    j_pos.get(r[vi["judge"]], far),
                    position.get(key[1], far),
                    r,
                )
            )
    gens.sort(key=lambda t: t[:3])
    verdicts.sort(key=lambda t: t[:4])
    with store.transaction() as con:
        n_g = store.insert_raw(con, "generations", g_cols, [t[-1] for t in gens])
        n_v = store.insert_raw(con, "verdicts", v_cols, [t[-1] for t in verdicts])
    for f in files:
        for extra in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{f}{extra}")
    return MergeResult(files=len(files), generations=n_g, verdicts=n_v)


__all__ = [
    "PARTS_DIR",
    "MergeResult",
    "Unit",
    "assign",
    "make_batches",
    "merge_parts",
    "part_files",
    "part_path",
    "pending_units",
    "prompt_length_key",
    "run_order",
]
