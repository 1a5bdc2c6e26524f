"""The runner on a tiny LLaVA checkpoint: same samples and order for every defense, per-sample errors,
resume without duplicates, refusal to resume with other settings, and a report from the run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlmshield.errors import UserInputError
from vlmshield.eval import EvalConfig, RunStore, build_plan, run_eval, summarize_run, write_report
from vlmshield.eval.steps import prompt_lengths
from vlmshield.models import VLM


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory,
    load_tiny: Callable[[str], VLM],
    make_jsonl_benchmark: Callable[[Path], Path],
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("run")
    bench = make_jsonl_benchmark(tmp / "bench")
    vlm = load_tiny("llava")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=["mini", f"jsonl@{bench}"],
        judges=["keyword", "keyword:window=0"],
        limit=6,
        batch_size=4,
        max_new_tokens=4,
        output_dir=tmp / "out",
    )
    result = run_eval(cfg, vlm=vlm, progress=False)
    return {"cfg": cfg, "result": result, "vlm": vlm, "plan": build_plan(cfg)}


def test_every_defense_same_samples_same_order(run: dict[str, Any]) -> None:
    plan, result = run["plan"], run["result"]
    order = [s.id for s in plan.samples]
    assert len(order) == 12  # 6 of mini (--limit is per benchmark) + the 6 fixture samples
    with RunStore(result.output_dir / "results.sqlite") as store:
        gens = store.generations()
        verdicts = store.verdicts()
    defenses = ["none", "coca", "ecso", "cmrm"]
    assert list(dict.fromkeys(g["defense"] for g in gens)) == defenses  # batch by batch, none first
    # batches are fixed chunks of the samples sorted by prompt tokens (the default order of a new run)
    lengths = prompt_lengths(run["vlm"], plan.samples)
    assert lengths is not None and len(lengths) == len(order) - 1  # the two-image sample cannot be encoded
    run_order = [s.id for batch in plan.batches("length", lengths) for s in batch]
    assert run_order[-1] == "jsonl/fixture/two-images"
    assert sorted(run_order) == sorted(order) and run_order != order
    for d in defenses:
        assert [g["sample_id"] for g in gens if g["defense"] == d] == run_order  # insertion order
    assert {(g["sample_id"], g["batch"]) for g in gens} == {(sid, i // 4) for i, sid in enumerate(run_order)}
    assert {g["sample_id"]: g["idx"] for g in gens} == {sid: i for i, sid in enumerate(order)}
    # one verdict per (defense, sample, judge), for the samples that were answered
    errors = [g for g in gens if g["error"]]
    assert {g["sample_id"] for g in errors} == {"jsonl/fixture/two-images"}
    assert len(errors) == len(defenses) and all("images" in g["error"] for g in errors)
    assert len(verdicts) == (len(gens) - len(errors)) * 2
    assert len({(v["defense"], v["sample_id"], v["judge"]) for v in verdicts}) == len(verdicts)
    ok = [g for g in gens if not g["error"]]
    assert all(isinstance(g["text"], str) and g["num_tokens"] == len(g["token_ids"]) for g in ok)
    assert all(g["forward_passes"] >= 1 and g["wall_time_s"] > 0 for g in ok)
    # the utility item (multiple choice) is scored judge-free
    assert {g["score"] for g in gens if g["sample_id"] == "jsonl/fixture/u1"} <= {0.0, 1.0}


def test_manifest_records_versions_specs_and_checksums(run: dict[str, Any]) -> None:
    m = json.loads((run["result"].output_dir / "manifest.json").read_text())
    for key in ("vlmshield", "torch", "transformers", "python"):
        assert m["versions"][key]
    assert m["model"]["revision"].startswith("sha256:")
    assert [d["label"] for d in m["defenses"]] == ["none", "coca", "ecso", "cmrm"]
    assert m["defenses"][2]["spec"]["templates_sha256"]
    assert m["judges"][0]["spec"]["phrases_sha256"]
    assert [b["name"] for b in m["benchmarks"]] == ["mini", "jsonl"]
    assert all(len(b["checksum"]) == 64 for b in m["benchmarks"])
    assert m["seeds"]["seed"] == 0 and m["status"] == "complete"
    assert m["invocations"][0]["command"]


def test_summary_and_report(run: dict[str, Any], tmp_path: Path) -> None:
    result = run["result"]
    s = result.summary
    assert s == summarize_run(result.output_dir)
    assert s["complete"] and s["judges"] == ["keyword", "keyword:window=0"]
    for name in ("none", "coca", "ecso", "cmrm"):
        d = s["defenses"][name]
        assert d["n"] == 7  # 4 mini + 3 fixture harmful answered (the fourth failed)
        assert 0.0 <= d["unsafe_rate"] <= 1.0 and 0.0 <= d["refusal_rate"] <= 1.0
        assert d["ci"][0] <= d["unsafe_rate"] <= d["ci"][1]
        assert d["over_refusal"]["n"] == 3 and d["utility"]["n"] == 1
        assert d["cost"]["per_sample"]["forward_passes"] >= 1
        assert d["errors"] == 1 and d["per_category"]
    assert s["defenses"]["none"]["cost"]["wall_time_vs_none"] == 1.0
    assert s["defenses"]["ecso"]["cost"]["wall_time_vs_none"] > 0
    assert s["agreement"][0]["judges"] == ["keyword", "keyword:window=0"]
    # report: markdown + valid PNGs, also to another place with --out semantics
    assert result.report_path is not None and "| coca |" in result.report_path.read_text()
    files = write_report(result.output_dir, tmp_path / "r" / "report.md")
    assert files.markdown.is_file()
    for p in [*result.plots, *files.plots]:
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG"


def test_rerun_resumes_without_duplicates_and_refuses_other_settings(run: dict[str, Any]) -> None:
    cfg, vlm = run["cfg"], run["vlm"]
    out = run["result"].output_dir
    with RunStore(out / "results.sqlite") as store:
        before = store.result_rows()
    again = run_eval(cfg, vlm=vlm, progress=False, write_report=False)
    assert again.generated == 0 and again.already_done == 48
    with RunStore(out / "results.sqlite") as store:
        assert store.result_rows() == before
    changed = EvalConfig(**{**vars(cfg), "defenses": ["coca:alpha=2"]})
    with pytest.raises(UserInputError, match=r"different settings.*--output-dir"):
        run_eval(changed, vlm=vlm, progress=False)
    fewer = EvalConfig(**{**vars(cfg), "limit": 3})
    with pytest.raises(UserInputError, match="--output-dir"):
        run_eval(fewer, vlm=vlm, progress=False)
    # adding a judge is fine: only the new verdicts are computed
    more = EvalConfig(**{**vars(cfg), "judges": ["keyword:window=50", *cfg.judges]})
    res = run_eval(more, vlm=vlm, progress=False, write_report=False)
    assert res.generated == 0 and res.summary["judge"] == "keyword:window=50"
    with RunStore(out / "results.sqlite") as store:
        assert len(store.verdicts()) == len(before[1]) * 3 // 2


def test_dataset_level_cmrm_from_vectors(
    tmp_path: Path, load_tiny: Callable[[str], VLM], test_image: Image.Image
) -> None:
    from vlmshield.conversation import Conversation
    from vlmshield.defenses.cmrm import calibrate_cmrm

    vlm = load_tiny("llava")
    anchors = [Conversation.single(q, images=[test_image]) for q in ("What is this?", "Describe it.")]
    vectors = calibrate_cmrm(vlm, anchors).save(tmp_path / "v.safetensors")
    cfg = EvalConfig(
        model=vlm.name,
        benchmarks=["mini:text"],
        defenses=[f"cmrm:vectors={vectors}"],
        limit=2,
        max_new_tokens=2,
        output_dir=tmp_path / "run",
    )
    result = run_eval(cfg, vlm=vlm, progress=False, write_report=False)
    assert list(result.summary["defenses"]) == ["none", "cmrm"]
    assert result.summary["defenses"]["cmrm"]["generated"] == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    spec = manifest["defenses"][1]["spec"]
    assert spec["level"] == "dataset" and spec["vectors_metadata"]["anchor_size"] == "2"
