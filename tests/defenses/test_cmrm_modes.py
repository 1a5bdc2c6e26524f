"""CMRM's shift modes on deeper tiny checkpoints: no compounding, rows without images, noise seeding,
calibration against transformers' own ``output_hidden_states`` on every layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from vlmshield import Conversation, GenerationConfig
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import calibrate_cmrm
from vlmshield.defenses.cmrm_gap import remaining_gap
from vlmshield.defenses.cmrm_vectors import shift_vectors
from vlmshield.defenses.steering import SteeringVectors
from vlmshield.errors import UserInputError
from vlmshield.models import VLM, load_vlm
from vlmshield.testing import tiny_checkpoint

LAYERS = 4
_DEEP: dict[str, VLM] = {}


def deep(family: str) -> VLM:
    if family not in _DEEP:
        _DEEP[family] = load_vlm(str(tiny_checkpoint(family, num_layers=LAYERS)), device="cpu")
    return _DEEP[family]


@pytest.fixture(params=["llava", "qwen2_vl"])
def vlm(request) -> VLM:
    return deep(request.param)


@pytest.fixture
def blank_input() -> Conversation:
    """An input whose image is the blank corruption itself: its shift is exactly known."""
    return Conversation.single(
        "What is shown here, in detail please?", images=[Image.new("RGB", (48, 40), "white")]
    )


def test_default_mode_lands_every_layer_on_the_text_only_state(vlm, blank_input):
    fractions = remaining_gap(vlm, [blank_input], build_defense("cmrm:level=sample,alpha=1"))
    assert len(fractions) == LAYERS
    assert max(fractions) < 1e-3, fractions


def test_compounding_mode_overshoots_and_increments_reduce_it(vlm, blank_input):
    comp = remaining_gap(vlm, [blank_input], build_defense("cmrm:level=sample,alpha=1,mode=compounding"))
    inc = remaining_gap(vlm, [blank_input], build_defense("cmrm:level=sample,alpha=1,mode=increments"))
    assert comp[0] < 1e-3 and comp[-1] > 1.5  # the additions of earlier layers carry forward
    assert inc[-1] < comp[-1]


@pytest.mark.parametrize("mode", ["sequential", "increments", "compounding"])
def test_dataset_level_leaves_rows_without_images_untouched(vlm, blank_input, test_image, tmp_path, mode):
    anchors = [blank_input, Conversation.single("Colour?", images=[test_image])]
    path = calibrate_cmrm(vlm, anchors, mode=mode).save(tmp_path / "v.safetensors")
    vecs = SteeringVectors.load(path)
    SteeringVectors(vecs.vectors * 30, vecs.layers, vecs.metadata).save(path)  # strong enough to show
    batch = [
        Conversation.single("Colour of the thing?", images=[test_image]),
        Conversation.single("Say hello."),
    ]
    cfg = GenerationConfig(max_new_tokens=6)
    plain = vlm.generate(batch, cfg).token_ids
    got = [r.token_ids for r in build_defense(f"cmrm:vectors={path},alpha=1").generate(vlm, batch, cfg)]
    assert got[1] == plain[1]  # no image: not shifted
    assert got[0] != plain[0]  # with an image: shifted


def test_noise_vectors_do_not_depend_on_the_batch(vlm, test_image, other_image):
    anchors = [
        Conversation.single("What is it?", images=[test_image]),
        Conversation.single("Colour?", images=[other_image]),
        Conversation.single("Describe the scene.", images=[test_image]),
    ]
    one = calibrate_cmrm(vlm, anchors, corruption="noise", batch_size=1, seed=3)
    three = calibrate_cmrm(vlm, anchors, corruption="noise", batch_size=3, seed=3)
    assert torch.allclose(one.vectors, three.vectors, atol=1e-5)
    shuffled = calibrate_cmrm(vlm, anchors[::-1], corruption="noise", batch_size=2, seed=3)
    assert torch.allclose(one.vectors, shuffled.vectors, atol=1e-5)
    other_seed = calibrate_cmrm(vlm, anchors, corruption="noise", batch_size=1, seed=4)
    assert not torch.allclose(one.vectors, other_seed.vectors)


def _final_norm(vlm: VLM) -> torch.nn.Module:
    layers = vlm.decoder_layers()
    for module in vlm.model.modules():
        if getattr(module, "layers", None) is not None and list(module.layers) == layers:
            return module.norm
    raise AssertionError("no final norm found")


def test_raw_shifts_equal_output_hidden_states_on_every_layer(vlm, blank_input, test_image):
    conv = Conversation.single("What is shown here?", images=[test_image])
    got, _ = shift_vectors(vlm, [conv], mode="compounding")
    norm = _final_norm(vlm)
    states = []
    for variant in (conv.text_only(), conv.with_replaced_images("blank")):
        with torch.inference_mode():
            hs = vlm.model(**vlm.encode([variant]), output_hidden_states=True).hidden_states
        states.append([h[0, -1].float() for h in hs[1:]])
    for layer in range(LAYERS - 1):  # hidden_states[l + 1] is decoder layer l's output
        assert torch.allclose(got[0, layer], states[0][layer] - states[1][layer], atol=1e-5), layer
    # the last entry of hidden_states is the final norm of the last layer's output
    text_last = vlm.forward([conv.text_only()]).hidden[LAYERS - 1]
    with torch.inference_mode():
        assert torch.allclose(norm(text_last[None])[0, 0], states[0][-1], atol=1e-5)
    assert torch.allclose(
        got[0, -1],
        text_last[0] - vlm.forward([conv.with_replaced_images("blank")]).hidden[LAYERS - 1][0],
        atol=1e-5,
    )


def test_metadata_records_the_settings_and_modes_must_match(vlm, blank_input, tmp_path):
    vecs = calibrate_cmrm(vlm, [blank_input], mode="increments", positions="last_and_generated", seed=2)
    meta = vecs.metadata
    assert (meta["mode"], meta["positions"], meta["seed"], meta["corruption"]) == (
        "increments",
        "last_and_generated",
        "2",
        "blank",
    )
    path = vecs.save(tmp_path / "v.safetensors")
    assert build_defense(f"cmrm:vectors={path}").spec()["mode"] == "increments"
    with pytest.raises(UserInputError, match="mode=increments"):
        build_defense(f"cmrm:vectors={path},mode=sequential")
    with pytest.raises(UserInputError, match="calibrate new ones"):
        build_defense(f"cmrm:vectors={path},layers=0:2").generate(
            vlm, [blank_input], GenerationConfig(max_new_tokens=2)
        )


def test_vectors_from_another_architecture_are_refused_unless_allowed(blank_input, tmp_path):
    llava, qwen = deep("llava"), deep("qwen2_vl")
    vecs = calibrate_cmrm(llava, [blank_input])
    assert vecs.hidden_size == qwen.hidden_size and len(vecs.layers) == qwen.num_layers
    path = vecs.save(tmp_path / "v.safetensors")
    cfg = GenerationConfig(max_new_tokens=2)
    with pytest.raises(UserInputError, match="allow_mismatch"):
        build_defense(f"cmrm:vectors={path}").generate(qwen, [blank_input], cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_defense(f"cmrm:vectors={path},allow_mismatch=true").generate(qwen, [blank_input], cfg)
    assert any("calibrated on" in str(w.message) for w in caught)
