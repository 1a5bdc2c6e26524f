"""The batch order: length-sorted batches give the answers of dataset-order batches (only the batch
numbers differ) and less padding; the order is part of the run's identity, and a run recorded before
orders existed resumes in its dataset order."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vlmshield.errors import UserInputError
from vlmshield.eval import EvalConfig, RunStore, run_eval
from vlmshield.eval.scale import ScaleOptions
from vlmshield.eval.store import GENERATION_RESULT_COLUMNS
from vlmshield.models import VLM

#: What a sample's answer is, whatever batch it was in. Costs are per batch by definition (forward passes
#: are the batch's decoding steps; sample-level CMRM shares its extra prefill's tokens over the batch)
#: and a float of the details (CMRM's shift norm) moves in the 8th digit with the padding.
ANSWER = ("defense", "sample_id", "idx", "text", "token_ids", "num_tokens", "new_tokens", "score", "error")


def _answer(row: tuple[object, ...]) -> tuple[object, ...]:
    details = json.loads(str(row[-1])) if row[-1] else {}
    rounded = {k: round(v, 6) if isinstance(v, float) else v for k, v in details.items()}
    return (*(row[GENERATION_RESULT_COLUMNS.index(c)] for c in ANSWER), rounded)


def _config(vlm: VLM, out: Path, order: str | None) -> EvalConfig:
    return EvalConfig(
        model=vlm.name, benchmarks=["mini", "mini:text"], defenses=["coca", "cmrm:level=sample"], limit=8,
        batch_size=4, max_new_tokens=4, output_dir=out, scale=ScaleOptions(order=order),
    )  # fmt: skip


def test_length_order_changes_the_batches_not_the_answers(
    tmp_path: Path, load_tiny: Callable[[str], VLM]
) -> None:
    vlm = load_tiny("llava")
    by_length = run_eval(_config(vlm, tmp_path / "length", None), vlm=vlm, progress=False, write_report=False)
    in_order = run_eval(
        _config(vlm, tmp_path / "dataset", "dataset"), vlm=vlm, progress=False, write_report=False
    )
    rows = []
    for run in ("length", "dataset"):
        with RunStore(tmp_path / run / "results.sqlite") as s:
            gens, verdicts = s.result_rows()
            batches = {(g["sample_id"], g["batch"]) for g in s.generations()}
        rows.append(([_answer(g) for g in gens], verdicts, batches))
    assert rows[0][0] == rows[1][0] and rows[0][1] == rows[1][1]  # same answers and verdicts
    assert rows[0][2] != rows[1][2]  # in other batches
    pad, pad_dataset = by_length.summary["padding"], in_order.summary["padding"]
    assert pad["order"] == "length" and pad_dataset["order"] == "dataset"
    # mini mixes text-only and image prompts: sorting by prompt tokens removes most of the padding
    assert pad["prompt"]["waste"] < pad_dataset["prompt"]["waste"] == pad["prompt_in_dataset_order"]
    manifest = json.loads((tmp_path / "length" / "manifest.json").read_text())
    assert manifest["identity"]["generation"]["order"] == "length"
    assert manifest["generation"]["order_key"] == "prompt tokens"


def test_order_is_identity_and_old_runs_resume_in_dataset_order(
    tmp_path: Path, load_tiny: Callable[[str], VLM]
) -> None:
    vlm = load_tiny("llava")
    out = tmp_path / "run"
    run_eval(_config(vlm, out, "dataset"), vlm=vlm, progress=False, write_report=False)
    with pytest.raises(UserInputError, match=r"generation\.order: 'dataset' -> 'length'"):
        run_eval(_config(vlm, out, "length"), vlm=vlm, progress=False, write_report=False)
    # a manifest written before batch orders existed: its batches were chunks of the dataset order
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["identity"]["generation"]["order"], manifest["generation"]["order"]
    path.write_text(json.dumps(manifest))
    again = run_eval(_config(vlm, out, None), vlm=vlm, progress=False, write_report=False)
    assert again.generated == 0 and again.already_done == 48
    assert json.loads(path.read_text())["identity"]["generation"]["order"] == "dataset"
