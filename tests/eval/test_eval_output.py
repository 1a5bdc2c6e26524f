"""What a run prints and writes: cost figures robust to one slow batch, the scored counts of benign-only
and utility-only runs, no matplotlib warning, and a reproduce line with absolute data paths."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vlmshield.eval import EvalConfig, run_eval, summarize_run, write_report
from vlmshield.eval import answering as answering_mod
from vlmshield.eval import runner as runner_mod
from vlmshield.eval.metrics import ItemResult, cost_summary
from vlmshield.eval.report import reproduce_command, summary_rows
from vlmshield.models import VLM


def _items(times: list[float]) -> list[ItemResult]:
    """Two samples per batch, each carrying its share of the batch's wall time."""
    return [
        ItemResult(f"s{2 * b + k}", "harmful", "c", cost={"wall_time_s": t}, batch=b)
        for b, t in enumerate(times)
        for k in range(2)
    ]


def test_one_slow_batch_does_not_flip_the_cost_ratio() -> None:
    none = _items([1.0, 1.0, 150.0, 1.0, 1.0])  # one batch of `none` hit by a busy machine
    coca = _items([2.0, 2.0, 2.0, 2.0, 2.0])
    c = cost_summary(coca, none)
    assert c["wall_time_vs_none"] == 2.0  # the sum-based ratio read 10 / 154 = 0.06x
    assert cost_summary(none)["per_sample"]["wall_time_s"] == 1.0
    assert c["per_sample"]["wall_time_s"] == 2.0 and c["total"]["wall_time_s"] == 20.0
    assert "median over batches" in c["wall_time_method"]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class _Timed:
    """A defense whose generate advances a fake clock: ``per_sample`` seconds per sample, ``slow``
    times that on its ``slow_call``-th call."""

    def __init__(self, inner: Any, clock: SimpleNamespace, per_sample: float, slow_call: int = 0) -> None:
        self.inner, self.clock, self.per_sample, self.slow_call = inner, clock, per_sample, slow_call
        self.calls = 0

    def generate(self, vlm: Any, convs: Any, config: Any, **kw: Any) -> Any:
        self.calls += 1
        out = self.inner.generate(vlm, convs, config, **kw)
        factor = 300.0 if self.calls == self.slow_call else 1.0
        self.clock.t += self.per_sample * factor * len(convs)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_run_with_one_slow_batch_keeps_the_ratio(
    tmp_path: Path, load_tiny: Callable[[str], VLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SimpleNamespace(t=0.0)
    fake_time = SimpleNamespace(perf_counter=lambda: clock.t, sleep=time.sleep)
    monkeypatch.setattr(answering_mod, "time", fake_time)  # where each batch is timed
    real_build = runner_mod.build_plan

    def build(config: EvalConfig) -> Any:
        plan = real_build(config)
        for entry in plan.defenses:
            slow = 2 if entry.label == "none" else 0  # the second batch of `none` takes 300x
            entry.defense = _Timed(entry.defense, clock, 1.0 if entry.label == "none" else 2.0, slow)
        return plan

    monkeypatch.setattr(runner_mod, "build_plan", build)
    vlm = load_tiny("llava")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=["mini:text"],
        defenses=["none", "coca"],
        limit=4,
        batch_size=1,
        max_new_tokens=2,
        output_dir=tmp_path / "run",
    )
    result = run_eval(cfg, vlm=vlm, progress=False, log=lambda msg: None)
    cost = result.summary["defenses"]["coca"]["cost"]
    assert cost["wall_time_vs_none"] == 2.0 and cost["batches"] == 4
    assert result.summary["defenses"]["none"]["cost"]["per_sample"]["wall_time_s"] == 1.0
    report = result.report_path.read_text() if result.report_path else ""
    assert "| 2.00x |" in report and "median over batches" in report


@pytest.mark.parametrize(
    ("label", "extra", "scored"),
    [("benign", {}, "0/3/0"), ("utility", {"choices": ["one", "two"], "answer": "B"}, "0/0/3")],
)
def test_benign_or_utility_only_runs_show_what_was_scored_without_warnings(
    label: str,
    extra: dict[str, Any],
    scored: str,
    tmp_path: Path,
    load_tiny: Callable[[str], VLM],
) -> None:
    rows = [{"id": f"q{i}", "query": f"What is {i} plus one?", "label": label, **extra} for i in range(3)]
    bench = _write_jsonl(tmp_path / "bench" / "only.jsonl", rows)
    vlm = load_tiny("llava")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=[f"jsonl@{bench}"],
        defenses=["none"],
        batch_size=4,
        max_new_tokens=2,
        output_dir=tmp_path / "run",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" included
        result = run_eval(cfg, vlm=vlm, progress=False, log=lambda msg: None)
        write_report(result.output_dir, tmp_path / "again" / "report.md")
    head, none_row = summary_rows(result.summary)
    assert head[1] == "scored h/b/u" and none_row[1] == scored
    assert result.summary["defenses"]["none"]["scored"][label] == 3


def test_reproduce_line_has_the_absolute_data_path(
    tmp_path: Path, load_tiny: Callable[[str], VLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _write_jsonl(tmp_path / "data" / "mine.jsonl", [{"query": "Hello?", "label": "benign"}])
    monkeypatch.chdir(tmp_path)
    vlm = load_tiny("llava")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=["jsonl@data/mine.jsonl"],
        defenses=["none"],
        max_new_tokens=2,
        output_dir=tmp_path / "run",
        command="vlmshield eval --benchmark jsonl@data/mine.jsonl --defense none --max-new-tokens 2",
    )
    result = run_eval(cfg, vlm=vlm, progress=False, log=lambda msg: None)
    report = (result.output_dir / "report.md").read_text()
    assert f"--benchmark jsonl@{bench.resolve()} --defense none" in report
    assert "jsonl@data/mine.jsonl" not in report
    assert summarize_run(result.output_dir)["benchmarks"][0]["path"] == str(bench.resolve())


def test_reproduce_command_rewrites_only_relative_benchmark_paths() -> None:
    manifest = {
        "benchmarks": [
            {"name": "mini", "variant": "text", "path": None},
            {"name": "figstep", "variant": "tiny", "path": "/data/FigStep"},
            {"name": "jsonl", "variant": None, "path": "/abs/x.jsonl"},
        ]
    }
    cmd = "vlmshield eval --tasks mini:text,figstep:tiny@../FigStep -b jsonl@/abs/x.jsonl --limit 4"
    assert reproduce_command(cmd, manifest) == (
        "vlmshield eval --tasks mini:text,figstep:tiny@/data/FigStep -b jsonl@/abs/x.jsonl --limit 4"
    )
    assert reproduce_command("unbalanced 'quote", manifest) == "unbalanced 'quote"
