"""Units of work: the length order, the deal of batches to ranks, resume with another number of ranks,
and the merge of per-rank part files (the order one process writes, idempotent after a crash)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlmshield.eval.shards import (
    Unit,
    assign,
    make_batches,
    merge_parts,
    part_files,
    part_path,
    pending_units,
    run_order,
)
from vlmshield.eval.store import GenerationRow, RunStore, VerdictRow


def _sample(sid: str, query: str = "q", images: int = 0) -> SimpleNamespace:
    return SimpleNamespace(id=sid, query=query, images=tuple(f"{sid}-{k}.png" for k in range(images)))


def test_length_order_sorts_by_prompt_length_and_keeps_the_evaluation_order_on_ties() -> None:
    samples = [
        _sample("a", "x" * 9, 1),
        _sample("b", "x" * 3, 0),
        _sample("c", "x" * 3, 1),
        _sample("d", "x" * 3, 0),
    ]
    assert [s.id for s in run_order(samples, "dataset")] == ["a", "b", "c", "d"]
    # without measured lengths: images first, then characters; ties (b, d) in evaluation order
    assert [s.id for s in run_order(samples, "length")] == ["b", "d", "c", "a"]
    # measured prompt tokens decide; a sample that could not be encoded goes last
    assert [s.id for s in run_order(samples, "length", {"a": 5, "b": 7, "d": 5})] == ["a", "d", "b", "c"]
    assert [[s.id for s in b] for b in make_batches(samples, 3, "length")] == [["b", "d", "c"], ["a"]]
    with pytest.raises(ValueError, match="unknown order"):
        run_order(samples, "random")


def _units(n_batches: int, defenses: tuple[str, ...] = ("none", "coca")) -> list[Unit]:
    return [Unit(b, d, (f"s{b}a", f"s{b}b")) for b in range(n_batches) for d in defenses]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_every_unit_goes_to_exactly_one_rank_with_its_whole_batch(world: int) -> None:
    units = _units(7)
    shares = [assign(units, world, r) for r in range(world)]
    flat = [u for share in shares for u in share]
    assert len(flat) == len(units) and set(flat) == set(units)  # all of them, none twice
    owner = {u.batch: r for r, share in enumerate(shares) for u in share}
    assert all(owner[u.batch] == r for r, share in enumerate(shares) for u in share)  # a batch stays whole
    sizes = [len({u.batch for u in share}) for share in shares]
    assert max(sizes) - min(sizes) <= 1  # round robin: balanced
    with pytest.raises(ValueError):
        assign(units, world, world)


def test_a_resume_with_another_number_of_ranks_neither_loses_nor_repeats_a_pair() -> None:
    rng = random.Random(0)
    batches = [[_sample(f"s{b}{k}") for k in range(3)] for b in range(6)]
    defenses = ("none", "coca", "ecso")
    everything = {(d, s.id) for batch in batches for s in batch for d in defenses}
    for trial in range(40):
        first = rng.choice([1, 2, 3, 4])
        # a killed run: each rank wrote a prefix of its units (whole units: one transaction each)
        done: set[tuple[str, str]] = set()
        for r in range(first):
            mine = assign(pending_units(batches, defenses, set()), first, r)
            for u in mine[: rng.randrange(len(mine) + 1)]:
                done |= {(u.defense, sid) for sid in u.sample_ids}
        then = rng.choice([1, 2, 3, 5])
        left = pending_units(batches, defenses, done)
        redo = [(u.defense, sid) for r in range(then) for u in assign(left, then, r) for sid in u.sample_ids]
        assert len(redo) == len(set(redo)), trial  # none twice
        assert not set(redo) & done, trial  # nothing done again
        assert set(redo) | done == everything, trial  # nothing lost


def _gen(defense: str, sid: str, idx: int, batch: int) -> GenerationRow:
    return GenerationRow(
        defense, sid, idx, batch, text=f"{defense}:{sid}", token_ids=[idx], cost={"calls": 1}
    )


def test_merge_writes_the_rows_in_single_process_order_once_and_removes_the_parts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    position = {"s0": 0, "s1": 1, "s2": 2, "s3": 3}  # run order; batches [s0, s1], [s2, s3]
    with RunStore(part_path(run, 1)) as p1:  # rank 1 did batch 1, coca before none to scramble
        p1.add_generations([_gen("coca", "s2", 2, 1), _gen("coca", "s3", 3, 1)])
        p1.add_generations([_gen("none", "s3", 3, 1), _gen("none", "s2", 2, 1)])
        p1.add_verdicts([VerdictRow("none", "s2", "kw", {"label": "refused"})])
    with RunStore(part_path(run, 0)) as p0:
        p0.add_generations([_gen("none", "s0", 0, 0), _gen("none", "s1", 1, 0), _gen("coca", "s0", 0, 0)])
        p0.add_verdicts([VerdictRow("coca", "s0", "kw", {"label": "x"}), VerdictRow("none", "s0", "kw2", {})])
        p0.add_verdicts([VerdictRow("none", "s0", "kw", {"label": "y"})])
    backup = tmp_path / "parts-copy"
    shutil.copytree(run / "parts", backup)
    with RunStore(run / "results.sqlite") as main:
        got = merge_parts(
            main, run, defense_order=["none", "coca"], judge_order=["kw", "kw2"], position=position
        )
        assert (got.files, got.generations, got.verdicts) == (2, 7, 4)
        assert part_files(run) == []
        order = [(g["defense"], g["sample_id"]) for g in main.generations()]
        assert order == [("none", "s0"), ("none", "s1"), ("coca", "s0"),
                         ("none", "s2"), ("none", "s3"), ("coca", "s2"), ("coca", "s3")]  # fmt: skip
        verdicts = [(v["defense"], v["sample_id"], v["judge"]) for v in main.verdicts()]
        assert verdicts == [
            ("none", "s0", "kw"),
            ("none", "s0", "kw2"),
            ("coca", "s0", "kw"),
            ("none", "s2", "kw"),
        ]
        before = main.result_rows()
        # a crash after the merge committed but before the parts were deleted: merging again adds nothing
        shutil.copytree(backup, run / "parts", dirs_exist_ok=True)
        again = merge_parts(
            main, run, defense_order=["none", "coca"], judge_order=["kw", "kw2"], position=position
        )
        assert (again.files, again.generations, again.verdicts) == (2, 0, 0)
        assert main.result_rows() == before and main.counts()["generations"] == 7
