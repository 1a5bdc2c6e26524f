"""One contract for every registered defense (garak-style): spec round trip, a batch equals its rows
alone, no hook or swapped config left after an exception, rows without images, cost recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

from vlmshield import GenerationConfig
from vlmshield.defenses import DEFENSE_INFO, DEFENSES, build_defense, defense_from_spec
from vlmshield.defenses.compose import Composition
from vlmshield.models import VLM
from vlmshield.testing import tiny_checkpoint

CFG = GenerationConfig(max_new_tokens=5)


def _llava() -> str:
    return str(tiny_checkpoint("llava"))


#: The spec each registered defense is checked with (a new defense must add one here).
SPECS: dict[str, Callable[[], str]] = {
    "none": lambda: "none",
    "coca": lambda: "coca:alpha=1.5",
    "cmrm": lambda: "cmrm:level=sample,alpha=0.5",
    "ecso": lambda: "ecso:force_flag=always",
    # the defended tiny model guards itself (same name): both stages, Llama Guard 3 Vision's format
    "guard": lambda: f"guard:model={_llava()},format=llamaguard3v,stage=both,max_new_tokens=4",
    "adashield": lambda: "adashield",
    "hiddendetect": lambda: "hiddendetect",
    "compose": lambda: (
        f"adashield+guard:model={_llava()},format=llamaguard3v,max_new_tokens=3"
        "+cmrm:level=sample,alpha=0.5+coca:alpha=1"
    ),
}


@pytest.fixture(scope="module")
def vlm(load_tiny: Callable[[str], VLM]) -> VLM:
    return load_tiny("llava")


def test_every_registered_defense_has_a_contract_spec_and_a_catalogue_row() -> None:
    assert set(SPECS) == set(DEFENSES.names())
    assert set(DEFENSE_INFO) == set(DEFENSES.names())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_round_trip(name: str) -> None:
    d = build_defense(SPECS[name]())
    spec = json.loads(json.dumps(d.spec()))  # what a manifest stores
    again = defense_from_spec(spec)
    assert json.loads(json.dumps(again.spec())) == spec
    assert again.name == d.name


def test_round_trip_drops_derived_keys(tmp_path: Any, vlm: VLM, test_image: Any) -> None:
    from vlmshield.conversation import Conversation
    from vlmshield.defenses.cmrm import calibrate_cmrm

    path = tmp_path / "v.safetensors"
    calibrate_cmrm(vlm, [Conversation.single("What is shown?", images=[test_image])]).save(path)
    d = build_defense(f"cmrm:vectors={path}")
    assert "vectors_metadata" in d.spec()
    assert defense_from_spec(d.spec()).spec() == d.spec()
    comp = build_defense(f"cmrm:vectors={path}+coca")
    assert isinstance(comp, Composition) and defense_from_spec(comp.spec()).spec() == comp.spec()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_batch_equals_rows_alone_rows_without_images_and_cost(name: str, vlm: VLM, rows: list[Any]) -> None:
    d = build_defense(SPECS[name]())
    batch = d.generate(vlm, rows, CFG)
    alone = [d.generate(vlm, [r], CFG)[0] for r in rows]
    assert len(batch) == len(rows)
    for b, a in zip(batch, alone, strict=True):
        assert (b.text, b.token_ids) == (a.text, a.token_ids)
    text_only = batch[1]  # the row without an image got an answer like any other
    assert isinstance(text_only.text, str)
    for r in batch:
        c = r.cost
        assert c.calls >= 1 and c.forward_passes >= 1 and c.prompt_tokens > 0 and c.wall_time_s >= 0
        json.dumps(r.details)  # run stores keep details as JSON


def _hook_counts(vlm: VLM) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in vlm.model.modules()]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_no_leftover_hooks_or_config_after_an_exception(name: str, vlm: VLM, rows: list[Any]) -> None:
    d = build_defense(SPECS[name]())
    before, config_before = _hook_counts(vlm), vlm.model.generation_config
    layer = vlm.decoder_layers()[0]
    for fail_at in (1, 2, 3, 5):
        calls = {"n": 0}

        def boom(
            _module: Any, _args: Any, _output: Any, fail_at: int = fail_at, calls: dict[str, int] = calls
        ) -> None:
            calls["n"] += 1
            if calls["n"] >= fail_at:
                raise RuntimeError("boom")

        handle = layer.register_forward_hook(boom)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                d.generate(vlm, rows, CFG)
        finally:
            handle.remove()
        assert _hook_counts(vlm) == before, f"hooks left after failing at call {fail_at}"
        assert vlm.model.generation_config is config_before
    # and the model still answers exactly as before
    with torch.inference_mode():
        assert d.generate(vlm, rows[:1], CFG)[0].token_ids == d.generate(vlm, rows[:1], CFG)[0].token_ids
