"""A model split over two "devices" on a CPU-only machine: decoder layer 0 in memory, layer 1 offloaded
to disk (accelerate's hooks move its weights in for each forward pass: meta / cpu placement), through
``load_vlm(device_map=..., offload_folder=...)`` as ``--device-map`` / ``--max-memory`` pass it.

On it, CoCA's alpha = -1 (the undefended model) and alpha = 0 (principle prompting) equivalences and
CMRM's alpha = 0 equivalence hold exactly, and CoCA / CMRM answer as on the unsharded model; an eval
with ``--device-map`` gives the rows of an eval without it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vlmshield import Conversation, GenerationConfig
from vlmshield.cli.main import main
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import calibrate_cmrm
from vlmshield.defenses.coca import Coca
from vlmshield.eval.store import RunStore
from vlmshield.models import VLM, load_vlm
from vlmshield.testing import tiny_checkpoint

GREEDY = GenerationConfig(max_new_tokens=6)
SPLIT = {
    "model.vision_tower": "cpu",
    "model.multi_modal_projector": "cpu",
    "model.language_model.embed_tokens": "cpu",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "disk",
    "model.language_model.norm": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> VLM:
    folder = tmp_path_factory.mktemp("offload")
    vlm = load_vlm(str(tiny_checkpoint("llava")), device_map=SPLIT, offload_folder=str(folder))
    layers = vlm.decoder_layers()
    # not a vacuous split: layer 1's weights live on disk (meta in memory) behind accelerate's hook
    assert vlm.model.hf_device_map["model.language_model.layers.1"] == "disk"
    assert hasattr(layers[1], "_hf_hook") and layers[1].self_attn.q_proj.weight.device.type == "meta"
    assert layers[0].self_attn.q_proj.weight.device.type == "cpu"
    return vlm


@pytest.fixture
def convs(test_image: object, other_image: object) -> list[Conversation]:
    return [
        Conversation.single("What is shown in this picture, in detail?", images=[test_image]),
        Conversation.single("hello"),
        Conversation.single("Colour?", images=[other_image]),
    ]


def test_sharded_model_generates_as_the_whole_one(
    sharded: VLM, load_tiny: Callable[[str], VLM], convs: list[Conversation]
) -> None:
    whole = load_tiny("llava")
    assert sharded.generate(convs, GREEDY).token_ids == whole.generate(convs, GREEDY).token_ids
    assert torch.equal(sharded.forward(convs).logits, whole.forward(convs).logits)


def test_coca_equivalences_hold_on_a_sharded_model(
    sharded: VLM, load_tiny: Callable[[str], VLM], convs: list[Conversation]
) -> None:
    plain = sharded.generate(convs, GREEDY).token_ids
    assert [r.token_ids for r in Coca(alpha=-1.0).generate(sharded, convs, GREEDY)] == plain
    coca0 = Coca(alpha=0.0)
    p, _ = coca0.branches(convs)
    assert [r.token_ids for r in coca0.generate(sharded, convs, GREEDY)] == sharded.generate(
        p, GREEDY
    ).token_ids
    two = [r.token_ids for r in Coca(alpha=2.0).generate(sharded, convs, GREEDY)]
    assert two == [r.token_ids for r in Coca(alpha=2.0).generate(load_tiny("llava"), convs, GREEDY)]


def test_cmrm_equivalences_hold_on_a_sharded_model(
    sharded: VLM,
    load_tiny: Callable[[str], VLM],
    convs: list[Conversation],
    tmp_path: Path,
) -> None:
    whole = load_tiny("llava")
    vectors = tmp_path / "v.safetensors"
    calibrate_cmrm(whole, [convs[0], convs[2]]).save(vectors)
    plain = sharded.generate(convs, GREEDY).token_ids
    zero = build_defense(f"cmrm:vectors={vectors},alpha=0").generate(sharded, convs, GREEDY)
    assert [r.token_ids for r in zero] == plain
    for spec in (f"cmrm:vectors={vectors},alpha=1", "cmrm:level=sample,alpha=0.5"):
        d = build_defense(spec)
        got = [r.token_ids for r in d.generate(sharded, convs, GREEDY)]
        assert got == [r.token_ids for r in d.generate(whole, convs, GREEDY)], spec
    # the hook on the offloaded layer really steers: a large alpha changes the answer
    big = build_defense(f"cmrm:vectors={vectors},alpha=50").generate(sharded, convs, GREEDY)
    assert [r.token_ids for r in big] != plain


@pytest.mark.slow
def test_eval_with_a_device_map_gives_the_rows_of_an_eval_without(
    tmp_path: Path, jsonl_benchmark: Path
) -> None:
    args = ["eval", "--model", str(tiny_checkpoint("llava")), "--benchmark", f"jsonl@{jsonl_benchmark}",
            "--defense", "coca", "--defense", "cmrm:level=sample", "--batch-size", "3",
            "--max-new-tokens", "4", "--no-progress"]  # fmt: skip
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(SPLIT))
    main([*args, "--output-dir", str(tmp_path / "plain")])
    main([*args, "--output-dir", str(tmp_path / "split"), "--device-map", str(device_map),
          "--offload-folder", str(tmp_path / "offload")])  # fmt: skip
    with (
        RunStore(tmp_path / "plain" / "results.sqlite") as a,
        RunStore(tmp_path / "split" / "results.sqlite") as b,
    ):
        assert a.result_rows() == b.result_rows()
        assert a.counts()["generations"] == 18
    placement = json.loads((tmp_path / "split" / "manifest.json").read_text())["model"]["placement"]
    assert placement == {"device": "cpu", "device_map": "custom", "max_memory": None, "gpus": []}
