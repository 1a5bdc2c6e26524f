"""Judges receive each sample's images in a run, fresh and after a resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vlmshield.eval import EvalConfig, RunStore, build_plan, run_eval
from vlmshield.judges.keyword import KeywordJudge
from vlmshield.models import VLM


def test_judges_get_the_samples_images_fresh_and_resumed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    load_tiny: Callable[[str], VLM],
    make_jsonl_benchmark: Callable[[Path], Path],
) -> None:
    bench = make_jsonl_benchmark(tmp_path / "bench")
    seen: dict[str, int] = {}
    real = KeywordJudge.judge

    def recording(self: KeywordJudge, items: Any) -> Any:
        for item in items:
            seen[item.query] = len(item.images)
        return real(self, items)

    monkeypatch.setattr(KeywordJudge, "judge", recording)
    vlm = load_tiny("llava")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=[f"jsonl@{bench}"],
        defenses=["none"],
        judges=["keyword"],
        batch_size=8,
        max_new_tokens=2,
        output_dir=tmp_path / "out",
    )
    result = run_eval(cfg, vlm=vlm, progress=False)
    plan = build_plan(cfg)
    want = {s.query: len(s.images) for s in plan.samples if s.id != "jsonl/fixture/two-images"}
    assert seen == want and any(want.values()) and not all(want.values())
    # a resumed run judges what an interrupted one left unjudged, with the same images
    with RunStore(result.output_dir / "results.sqlite") as store, store.transaction() as con:
        con.execute("DELETE FROM verdicts")
    seen.clear()
    run_eval(cfg, vlm=vlm, progress=False)
    assert seen == want
