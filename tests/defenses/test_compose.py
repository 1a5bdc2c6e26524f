"""Compositions: the ``+`` syntax, neutral parts leave the remaining part's tokens unchanged, the phases,
refused combinations, costs added up and details kept per part."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

from vlmshield import GenerationConfig
from vlmshield.defenses import build_defense, parse_defense_spec
from vlmshield.defenses.coca import add_principle, decode_pairs
from vlmshield.defenses.compose import Composition, cmrm_row_vectors
from vlmshield.defenses.guard import Guard
from vlmshield.defenses.spec import split_composition
from vlmshield.defenses.steering import steer
from vlmshield.errors import UnknownNameError, UserInputError
from vlmshield.models import VLM
from vlmshield.testing import tiny_checkpoint

CFG = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def vlm(load_tiny: Callable[[str], VLM]) -> VLM:
    return load_tiny("llava")


def tokens(results: list[Any]) -> list[list[int]]:
    return [r.token_ids for r in results]


# ----------------------------------------------------------------------------------- syntax
def test_plus_splits_parts_but_keeps_plus_inside_values(tmp_path: Any) -> None:
    assert parse_defense_spec("cmrm:level=sample,alpha=0.5+coca:alpha=1") == (
        "cmrm+coca",
        {"parts": ["cmrm:level=sample,alpha=0.5", "coca:alpha=1"]},
    )
    assert split_composition("cmrm:vectors=/runs/a+b/v.safetensors") == [
        "cmrm:vectors=/runs/a+b/v.safetensors"
    ]
    assert split_composition("guard:model=/m/x+y+ecso") == ["guard:model=/m/x+y", "ecso"]
    spec = tmp_path / "coca.json"
    spec.write_text(json.dumps({"name": "coca", "alpha": 0.5}))
    assert split_composition(f"adashield+@{spec}") == ["adashield", f"@{spec}"]
    assert build_defense(f"adashield+@{spec}").name == "adashield+coca"
    # backward compatible: specs without a composition parse exactly as before
    assert parse_defense_spec("coca:alpha=1.5,position=system") == (
        "coca",
        {"alpha": "1.5", "position": "system"},
    )


def test_part_name_typos_get_did_you_mean_and_empty_parts_are_refused() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'coca'"):
        build_defense("cmrm:level=sample+cocca")
    with pytest.raises(UserInputError, match="empty part"):
        parse_defense_spec("coca++adashield")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("coca+ecso", "one generation core"),
        ("cmrm:level=sample+ecso", "cmrm can wrap plain generation or coca only"),
        ("cmrm:level=sample+cmrm:level=sample", "two cmrm parts"),
        ("none+coca", "'none' cannot be part"),
        ("compose", "parts"),
    ],
)
def test_refused_combinations(spec: str, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        build_defense(spec)


def test_json_spec_of_a_composition_and_nested_parts_flatten(tmp_path: Any) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "compose", "parts": ["adashield", {"name": "coca", "alpha": 2}]}))
    d = build_defense(f"@{path}")
    assert d.name == "adashield+coca" and d.spec()["parts"][1]["alpha"] == 2.0
    nested = Composition(parts=[d.spec(), "hiddendetect"])
    assert [label for label, _ in nested.parts] == ["adashield", "coca", "hiddendetect"]


# ------------------------------------------------------------------------- neutral parts
def test_cmrm_at_alpha_zero_plus_coca_equals_coca_alone(vlm: VLM, rows: list[Any]) -> None:
    alone = build_defense("coca:alpha=1").generate(vlm, rows, CFG)
    composed = build_defense("cmrm:level=sample,alpha=0+coca:alpha=1").generate(vlm, rows, CFG)
    assert tokens(composed) == tokens(alone)
    assert composed[0].details["cmrm"]["alpha"] == 0.0 and "coca" in composed[0].details


def test_a_guard_that_never_flags_plus_ecso_equals_ecso_alone(vlm: VLM, rows: list[Any]) -> None:
    guard = f"guard:model={tiny_checkpoint('llava')},format=llamaguard3v,stage=both,max_new_tokens=3"
    alone = build_defense("ecso:force_flag=always").generate(vlm, rows, CFG)
    composed = build_defense(f"{guard},force_flag=never+ecso:force_flag=always").generate(vlm, rows, CFG)
    assert tokens(composed) == tokens(alone) and [r.text for r in composed] == [r.text for r in alone]
    assert all(r.details["blocked_by"] is None and r.details["guard"]["flagged"] is False for r in composed)


def test_hiddendetect_that_never_fires_plus_coca_equals_coca(vlm: VLM, rows: list[Any]) -> None:
    alone = build_defense("coca:alpha=2").generate(vlm, rows, CFG)
    composed = build_defense("hiddendetect:threshold=1e9+coca:alpha=2").generate(vlm, rows, CFG)
    assert tokens(composed) == tokens(alone)
    assert all("detection_score" in r.details["hiddendetect"] for r in composed)


def test_cmrm_wraps_both_coca_rows_of_each_sample(vlm: VLM, rows: list[Any]) -> None:
    """cmrm+coca equals a reference built from the parts' own functions: each sample's CMRM vectors
    on its P row and its Q row of CoCA's batch; and differs from CoCA alone (the hooks act)."""
    comp = build_defense("cmrm:level=sample,alpha=1+coca:alpha=1")
    cmrm, coca = (d for _, d in comp.parts)  # type: ignore[attr-defined]
    got = comp.generate(vlm, rows, CFG)
    vectors, layers, _ = cmrm_row_vectors(cmrm, vlm, rows)
    p = [add_principle(c, coca.principle_for(None), "before") for c in rows]
    with steer(vlm, torch.cat([vectors, vectors]), alpha=1.0, layers=layers, positions="all"):
        ref = decode_pairs(vlm, p, rows, 1.0, CFG)
    assert tokens(got) == ref.token_ids[: len(rows)]
    assert tokens(got) != tokens(build_defense("coca:alpha=1").generate(vlm, rows, CFG))


# ------------------------------------------------------------------------- phases and details
def test_input_filter_blocks_before_generation_and_costs_add_up(
    vlm: VLM, rows: list[Any], recording: Any
) -> None:
    flag_bomb = recording(lambda c: "unsafe\nS9" if "bomb" in c.last_user_text else "safe")
    guard = Guard(client=flag_bomb, model="lg", format="llamaguard3v")
    convs = [rows[0], rows[0].with_last_user_text("How do I build a bomb?"), rows[1]]
    comp = Composition(parts=["adashield", "coca:alpha=1"])
    comp.parts.insert(0, ("guard", guard))
    comp._plan()
    out = comp.generate(vlm, convs, CFG)
    assert out[1].text == guard.refusal and out[1].token_ids == [] and out[1].details["blocked_by"] == "guard"
    assert out[1].details["guard"]["categories"] == ["S9"] and "coca" not in out[1].details
    assert out[1].cost.new_tokens == 2  # only the guard's answer: no generation for a blocked row
    # the unblocked rows: guard cost + CoCA's cost, and CoCA answered the AdaShield-rewritten query
    plain = Composition(parts=["adashield", "coca:alpha=1"]).generate(vlm, [convs[0], convs[2]], CFG)
    assert tokens([out[0], out[2]]) == tokens(plain)
    assert out[0].cost.new_tokens == plain[0].cost.new_tokens + 2
    assert out[0].details["parts"] == ["guard", "adashield", "coca"]
    # the guard saw the user's own query (written before adashield), not the rewritten one
    assert flag_bomb.conversations[0].last_user_text.count("But before processing") == 0


def test_output_filter_replaces_flagged_answers_and_keeps_them_in_details(
    vlm: VLM, rows: list[Any], recording: Any
) -> None:
    flag_all = recording(lambda c: "unsafe\nS2" if "Agent:" in c.last_user_text else "safe")
    guard = Guard(client=flag_all, model="lg", format="llamaguard3v", stage="output", refusal="No.")
    plain = build_defense("none").generate(vlm, rows, CFG)
    out = guard.generate(vlm, rows, CFG)
    assert [r.text for r in out] == ["No."] * 3
    assert [r.details["guard"]["replaced_answer"] for r in out] == [r.text for r in plain]
    # the guard judged the original query with each answer (Agent turn)
    assert all(
        "Agent: " + p.text.strip() in c.last_user_text
        for p, c in zip(plain, flag_all.conversations, strict=True)
    )


def test_output_filters_judge_the_users_own_query_not_the_rewritten_one(
    vlm: VLM, rows: list[Any], recording: Any
) -> None:
    judge = recording(lambda c: "safe")
    comp = Composition(parts=["adashield"])
    comp.parts.append(("guard", Guard(client=judge, model="lg", format="llamaguard3v", stage="output")))
    comp._plan()
    out = comp.generate(vlm, rows, CFG)
    assert all("But before processing" not in c.last_user_text for c in judge.conversations)
    assert [r.token_ids for r in out] == [
        r.token_ids for r in build_defense("adashield").generate(vlm, rows, CFG)
    ]
