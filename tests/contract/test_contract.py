"""The conformance contract: every registered VLM family passes the same tests.

A family is added by a row in ``vlmshield.models.families`` and a spec in ``vlmshield.testing.families``;
these tests then run on it with no new test code. Each family's tiny checkpoint is built once (cached)
and loaded once per session.
"""

from __future__ import annotations

import pytest
import torch

from vlmshield import Conversation, GenerationConfig
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import calibrate_cmrm
from vlmshield.errors import UserInputError
from vlmshield.models import edit_layer_outputs, load_vlm
from vlmshield.models.families import FAMILIES as ROWS
from vlmshield.testing import tiny_checkpoint
from vlmshield.testing.reference import layer_states_from_hidden_states, naive_coca_greedy

# transformers' own processors (GLM-4V, PaliGemma) trip numpy 2's copy-keyword deprecation
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N = 4
GREEDY = GenerationConfig(max_new_tokens=N)


def test_loads_offline_from_disk(vlm, family):
    path = tiny_checkpoint(family)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert vlm.family == family and vlm.info is ROWS[family]
    assert sum(p.numel() for p in vlm.model.parameters()) < 1_000_000
    assert vlm.image_token_id is not None and vlm.hidden_size > 0
    names = {id(m): n for n, m in vlm.model.named_modules()}
    for layer in vlm.decoder_layers():  # the language model's, never the vision tower's
        assert "vision" not in names[id(layer)] and "visual" not in names[id(layer)]


def test_generate_with_and_without_image(vlm, convs):
    out = vlm.generate(convs[:2], GREEDY)
    assert out.num_new_tokens == [N, N]  # special tokens are damped: a tiny model never stops early
    assert out.num_prompt_tokens[0] > out.num_prompt_tokens[1]
    for ids, text in zip(out.token_ids, out.texts, strict=True):
        assert vlm.image_token_id not in ids
        assert text and "\ufffd" not in text  # word pieces, not special tokens or broken bytes


def test_forward_logits_agree_with_the_first_greedy_token(vlm, convs):
    out = vlm.forward(convs, layers=[0, -1])
    assert set(out.hidden) == {0, vlm.num_layers - 1}
    assert out.hidden[0].shape == (len(convs), vlm.hidden_size)
    first = vlm.generate(convs, GenerationConfig(max_new_tokens=1))
    assert [ids[0] for ids in first.token_ids] == out.logits.argmax(-1).tolist()


def test_batched_rows_equal_rows_alone(vlm, convs):
    batches = [convs]
    if not vlm.info.mixed_batches_exact:  # documented in the family's row: image rows and text rows apart
        batches = [[c for c in convs if c.num_images], [c.text_only() for c in convs]]
    for batch in batches:
        batched = vlm.generate(batch, GREEDY)
        for i, conv in enumerate(batch):
            assert vlm.generate([conv], GREEDY).token_ids[0] == batched.token_ids[i], f"row {i}"


def test_hook_changes_logits_and_its_removal_restores_them(vlm, convs):
    before = vlm.forward(convs).logits
    shift = torch.full((vlm.hidden_size,), 5.0)
    with edit_layer_outputs(vlm.decoder_layers()[0], lambda h: h + shift.to(h)):
        during = vlm.forward(convs).logits
    after = vlm.forward(convs).logits
    assert not torch.allclose(before, during)
    assert torch.equal(before, after)


def test_text_only_inputs_carry_no_image(vlm, convs):
    with_image = vlm.encode([convs[0]])
    assert vlm.image_token_mask(with_image["input_ids"]).any()
    assert any(k.startswith("pixel_values") for k in with_image)
    spans = vlm.image_token_spans(with_image["input_ids"])
    assert spans[0] and all(a < b for a, b in spans[0])
    text_only = vlm.encode([convs[0].text_only(), convs[1]])
    assert not vlm.image_token_mask(text_only["input_ids"]).any()
    assert not any(k.startswith("pixel_values") for k in text_only)


def test_replacement_images_keep_the_layout(vlm, convs):
    mask = vlm.image_token_mask(vlm.encode([convs[0]])["input_ids"])
    for corruption in ("blank", "noise"):
        other = vlm.encode([convs[0].with_replaced_images(corruption, seed=3)])["input_ids"]
        assert torch.equal(vlm.image_token_mask(other), mask)


def test_too_many_images_is_a_clear_error(vlm, test_image):
    conv = Conversation.single("two?", images=[test_image] * (vlm.max_images + 1))
    with pytest.raises(UserInputError, match="at most"):
        vlm.encode([conv])


def test_coca_alpha_two_equals_the_naive_reference(vlm, convs):
    coca = build_defense("coca:alpha=2")
    got = coca.generate(vlm, convs[:2], GREEDY)
    p, _ = coca.branches(convs[:2], vlm=vlm)
    for i, conv in enumerate(convs[:2]):
        assert got[i].token_ids == naive_coca_greedy(vlm, conv, p[i], 2.0, N), f"row {i}"


def test_cmrm_calibration_is_output_hidden_states_and_alpha_zero_is_the_plain_model(vlm, convs, tmp_path):
    anchors = [convs[0], convs[2]]
    vectors = calibrate_cmrm(vlm, anchors, mode="compounding", batch_size=1)
    expected: dict[int, list[torch.Tensor]] = {}
    for conv in anchors:  # computed independently, one input at a time, from output_hidden_states
        text = layer_states_from_hidden_states(vlm, conv.text_only())
        blank = layer_states_from_hidden_states(vlm, conv.with_replaced_images("blank"))
        for layer in text.keys() & blank.keys():
            expected.setdefault(layer, []).append(text[layer] - blank[layer])
    assert expected, "no decoder layer could be compared"
    for layer, shifts in expected.items():
        assert torch.allclose(vectors.vectors[layer], torch.stack(shifts).mean(0), atol=1e-5), layer
    path = vectors.save(tmp_path / "v.safetensors")
    plain = vlm.generate(convs, GREEDY).token_ids
    steered = build_defense(f"cmrm:vectors={path},alpha=0").generate(vlm, convs, GREEDY)
    assert [r.token_ids for r in steered] == plain


def test_ecso_final_step_carries_no_image(vlm, convs):
    seen: list[dict[str, object]] = []
    encode = vlm.encode

    def spy(conversations, *args, **kwargs):
        inputs = encode(conversations, *args, **kwargs)
        seen.append(
            {
                "pixels": any(k.startswith("pixel_values") for k in inputs),
                "image_tokens": int(vlm.image_token_mask(inputs["input_ids"]).sum()),
                "final": all("HARMLESS and ETHICAL" in c.last_user_text for c in conversations),
            }
        )
        return inputs

    vlm.encode = spy
    try:
        build_defense("ecso:preset=paper,force_flag=always").generate(
            vlm, convs[:2], GenerationConfig(max_new_tokens=2)
        )
    finally:
        del vlm.encode
    finals = [s for s in seen if s["final"]]
    assert finals and seen[0]["pixels"]  # step 1 saw the image; step 4 ran
    assert all(not s["pixels"] and s["image_tokens"] == 0 for s in finals)


def test_blocked_families_still_fail_as_documented(blocked_family):
    """A blocked family's reason is checked, so the row is updated when transformers fixes it."""
    vlm = load_vlm(str(tiny_checkpoint(blocked_family)), device="cpu")
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises
        vlm.generate([Conversation.single("hi")], GenerationConfig(max_new_tokens=1))
