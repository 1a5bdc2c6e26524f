"""Detection AUROC of input-scoring defenses (HiddenDetect): the metric, the summary rows it reads,
and ``vlmshield eval``'s summary and report on a tiny checkpoint."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from vlmshield.eval import EvalConfig, run_eval
from vlmshield.eval.detection import auroc, detection_score, detection_summary
from vlmshield.models import VLM


def _pairwise(scores: list[float], positive: list[bool]) -> float:
    """AUROC by definition: P(score of a positive > score of a negative), ties one half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_definition_with_ties() -> None:
    rng = random.Random(4)
    for _ in range(50):
        n = rng.randint(2, 30)
        scores = [round(rng.random(), 1) for _ in range(n)]  # rounding makes ties
        positive = [rng.random() < 0.5 for _ in range(n)]
        if all(positive) or not any(positive):
            assert auroc(scores, positive) is None
            continue
        assert auroc(scores, positive) == pytest.approx(_pairwise(scores, positive))
    assert auroc([0.1, 0.9], [True, False]) == 0.0


def test_summary_reads_top_level_and_part_scores_and_skips_utility_and_errors() -> None:
    samples = [
        {"sample_id": "h", "label": "harmful"},
        {"sample_id": "b", "label": "benign"},
        {"sample_id": "u", "label": "utility"},
        {"sample_id": "e", "label": "harmful"},
    ]
    gens = [
        {
            "defense": "x",
            "sample_id": "h",
            "details": {"hiddendetect": {"detection_score": 0.9}, "blocked_by": "hiddendetect"},
        },
        {"defense": "x", "sample_id": "b", "details": {"detection_score": 0.2, "blocked_by": None}},
        {"defense": "x", "sample_id": "u", "details": {"detection_score": 0.5}},
        {"defense": "x", "sample_id": "e", "details": None, "error": "boom"},
        {"defense": "none", "sample_id": "h", "details": {}},
    ]
    assert detection_summary(samples, gens, "x") == {
        "auroc": 1.0,
        "n": 2,
        "harmful": 1,
        "benign": 1,
        "flagged_harmful": 1,
        "flagged_benign": 0,
    }
    assert detection_summary(samples, gens, "none") is None
    assert detection_score({"guard": {"flagged": True}}) is None


def test_eval_reports_hiddendetect_auroc_next_to_the_other_defenses(
    tmp_path: Path, load_tiny: Callable[[str], VLM]
) -> None:
    vlm = load_tiny("llava")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=["mini"],
        defenses=["coca", "hiddendetect", "adashield+hiddendetect:mode=score"],
        limit=8,
        batch_size=4,
        max_new_tokens=3,
        output_dir=tmp_path / "out",
    )
    result = run_eval(cfg, vlm=vlm, progress=False, log=lambda m: None)
    defenses = result.summary["defenses"]
    det = defenses["hiddendetect"]["detection"]
    assert det["n"] == 8 and det["harmful"] + det["benign"] == 8 and 0.0 <= det["auroc"] <= 1.0
    assert "detection" in defenses["adashield+hiddendetect"] and "detection" not in defenses["coca"]
    text = (result.output_dir / "report.md").read_text()
    assert "## Detection (AUROC" in text and "| hiddendetect |" in text
