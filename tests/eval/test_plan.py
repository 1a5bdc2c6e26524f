"""The plan: sample selection, argument parsing, defense and judge resolution, fail-fast errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from vlmshield.benchmarks import load_benchmark
from vlmshield.errors import ModelLoadError, UnknownNameError, UserInputError
from vlmshield.eval.plan import (
    EvalConfig,
    build_plan,
    default_output_dir,
    parse_benchmark_arg,
    resolve_defenses,
    resolve_judges,
    select_samples,
)


@pytest.fixture(scope="module")
def mini_text() -> list:
    return load_benchmark("mini:text").samples


def test_limit_same_subset_for_a_seed_and_another_for_another_seed(mini_text: list) -> None:
    a = select_samples(mini_text, 12, seed=0)
    assert [s.id for s in a] == [s.id for s in select_samples(mini_text, 12, seed=0)]
    b = select_samples(mini_text, 12, seed=1)
    assert {s.id for s in a} != {s.id for s in b}
    # stratified by label (40 harmful, 20 benign -> 8 + 4), kept in the benchmark's order
    assert Counter(s.label for s in a) == {"harmful": 8, "benign": 4}
    order = {s.id: i for i, s in enumerate(mini_text)}
    assert [order[s.id] for s in a] == sorted(order[s.id] for s in a)
    # independent of the order the loader returned the samples in
    assert {s.id for s in select_samples(list(reversed(mini_text)), 12, seed=0)} == {s.id for s in a}
    assert select_samples(mini_text, None, seed=0) == mini_text
    assert len(select_samples(mini_text, 1000, seed=0)) == len(mini_text)
    assert len(select_samples(mini_text, 7, seed=3)) == 7


def test_parse_benchmark_arg() -> None:
    assert parse_benchmark_arg("mini") == parse_benchmark_arg("mini", None)
    r = parse_benchmark_arg("figstep:tiny@data/fs")
    assert (r.name, r.variant, r.path, r.label) == ("figstep", "tiny", "data/fs", "figstep:tiny")
    assert parse_benchmark_arg("mini", "text").variant == "text"
    with pytest.raises(UserInputError):
        parse_benchmark_arg("mini@")


def test_defenses_baseline_first_and_labels() -> None:
    assert [d.label for d in resolve_defenses([])] == ["none", "coca", "ecso", "cmrm"]
    assert [d.label for d in resolve_defenses(["coca"])] == ["none", "coca"]
    assert [d.label for d in resolve_defenses(["coca", "none"])] == ["none", "coca"]
    both = resolve_defenses(["coca:alpha=1", "coca:alpha=2"])
    assert [d.label for d in both] == ["none", "coca:alpha=1", "coca:alpha=2"]
    assert both[2].spec()["alpha"] == 2.0
    with pytest.raises(UserInputError, match="twice"):
        resolve_defenses(["coca", "coca"])


def test_unknown_names_and_bad_arguments_fail_with_suggestions(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'coca'"):
        resolve_defenses(["cocaa"])
    with pytest.raises(UserInputError, match="alpha"):
        resolve_defenses(["coca:alpha=oops"])
    with pytest.raises(UserInputError, match="vectors"):
        resolve_defenses(["cmrm"])  # dataset level needs vectors
    with pytest.raises(UnknownNameError, match="did you mean 'keyword'"):
        resolve_judges(["keywrd"])
    with pytest.raises(UserInputError, match="window"):
        resolve_judges(["keyword:windw=3"])
    with pytest.raises(ModelLoadError, match="judge model"):
        resolve_judges([f"llm:template=mmsafety,model={tmp_path / 'nope'}"])
    # an llm judge is checked without loading its model
    [j] = resolve_judges([f"llm:template=mmsafety,model={tmp_path}"])
    assert j.label == "llm:mmsafety" and j.checked_spec["template"] == "mmsafety"
    with pytest.raises(UnknownNameError, match="did you mean 'mini'"):
        build_plan(EvalConfig(model=str(tmp_path), benchmarks=["minii"]))
    with pytest.raises(UserInputError, match="variant"):
        build_plan(EvalConfig(model=str(tmp_path), benchmarks=["mini:txt"]))
    with pytest.raises(ModelLoadError):
        build_plan(EvalConfig(model=str(tmp_path / "missing"), benchmarks=["mini:text"], defenses=["none"]))


def test_plan_orders_samples_and_batches(tmp_path: Path, jsonl_benchmark: Path) -> None:
    cfg = EvalConfig(
        model=str(tmp_path),
        benchmarks=[f"mini:text,jsonl@{jsonl_benchmark}"],
        defenses=["none"],
        limit=4,
        batch_size=3,
    )
    plan = build_plan(cfg)
    ids = [s.id for s in plan.samples]
    assert len(ids) == 8 and ids[:4] == [s.id for s in plan.benchmarks[0].samples]
    assert [len(b) for b in plan.batches()] == [3, 3, 2]
    assert plan.sample_ids_sha256() == build_plan(cfg).sample_ids_sha256()
    # the default run folder is a function of the settings
    assert default_output_dir(cfg) == default_output_dir(EvalConfig(**vars(cfg)))
    assert default_output_dir(cfg) != default_output_dir(EvalConfig(**{**vars(cfg), "seed": 1}))


def test_demo_model_gets_dataset_level_cmrm_when_vectors_ship(monkeypatch, tmp_path):
    from vlmshield.eval import plan

    assert plan.default_defenses("some/model")[-1] == "cmrm:level=sample"
    fake = tmp_path / "cmrm_vectors.safetensors"
    monkeypatch.setattr(plan, "DEMO_CMRM_VECTORS", fake)
    assert plan.default_defenses("demo")[-1] == "cmrm:level=sample"  # not shipped: sample level
    fake.write_bytes(b"x")
    assert plan.default_defenses("demo")[-1] == f"cmrm:vectors={fake}"


@pytest.mark.parametrize(("model", "rows"), [("demo", 32), ("some/model", 16), ("ckpt/tiny-llava", 16)])
def test_batch_size_defaults_to_the_models_and_an_explicit_one_wins(model: str, rows: int) -> None:
    from vlmshield.eval import manifest as mf

    cfg = EvalConfig(model=model, benchmarks=["mini:text"], limit=40)
    assert cfg.batch_size is None and cfg.rows_per_batch == rows
    assert [len(b) for b in build_plan(cfg).batches()] == {32: [32, 8], 16: [16, 16, 8]}[rows]
    # the default is the same run as asking for it: same folder, same recorded batch size
    spelled = EvalConfig(model=model, benchmarks=["mini:text"], limit=40, batch_size=rows)
    assert default_output_dir(cfg) == default_output_dir(spelled)
    draft = mf.build_manifest(build_plan(cfg), order="length", model_revision=None, dtype=None, device=None,
                              family=None)  # fmt: skip
    assert draft["generation"]["batch_size"] == draft["identity"]["generation"]["batch_size"] == rows
    other = EvalConfig(model=model, benchmarks=["mini:text"], limit=40, batch_size=8)
    assert other.rows_per_batch == 8 and default_output_dir(other) != default_output_dir(cfg)
    with pytest.raises(UserInputError, match="--batch-size must be >= 1"):
        EvalConfig(model=model, batch_size=0).check()
