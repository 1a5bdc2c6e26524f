"""CMRM: calibration, artifacts, hooks and their equivalences on tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

from vlmshield import Conversation, GenerationConfig
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import aggregate, calibrate_cmrm, parse_layers, shift_vectors
from vlmshield.defenses.steering import SteeringVectors, steer
from vlmshield.errors import UserInputError
from vlmshield.models import capture_layer_outputs

GREEDY = GenerationConfig(max_new_tokens=6)
FAMS = ["llava", "qwen2_vl", "gemma3"]


@pytest.fixture(params=FAMS)
def vlm(request, load_tiny):
    return load_tiny(request.param)


@pytest.fixture
def convs(test_image, other_image):
    return [
        Conversation.single("What is shown here, in detail please?", images=[test_image]),
        Conversation.single("hello"),
        Conversation.single("Colour?", images=[other_image]),
    ]


@pytest.fixture
def vectors(vlm, convs, tmp_path):
    path = tmp_path / "v.safetensors"
    calibrate_cmrm(vlm, [convs[0], convs[2]]).save(path)
    return path


def test_calibration_equals_the_expected_mean(vlm, convs):
    anchors = [convs[0], convs[2]]
    got = calibrate_cmrm(vlm, anchors, batch_size=1, mode="compounding")
    expected = []
    for conv in anchors:  # computed independently, one input at a time, from output_hidden_states
        hs = []
        for variant in (conv.text_only(), conv.with_replaced_images("blank")):
            out = vlm.model(**vlm.encode([variant]), output_hidden_states=True)
            hs.append(torch.stack([h[0, -1] for h in out.hidden_states[1 : vlm.num_layers]]))
        expected.append(hs[0] - hs[1])
    mean = torch.stack(expected).mean(0)
    # output_hidden_states holds layer outputs except the last, which is normed: compare the others
    assert torch.allclose(got.vectors[: vlm.num_layers - 1], mean.float(), atol=1e-5)
    assert got.vectors.abs().sum() > 0
    assert got.metadata["anchor_size"] == "2" and got.metadata["hidden_size"] == str(vlm.hidden_size)


def test_aggregators_on_synthetic_shifts():
    direction = torch.tensor([3.0, 4.0]) / 5
    shifts = torch.stack([direction * s for s in (1.0, 2.0, 3.0)])[:, None, :]  # [3, 1, 2]
    assert torch.allclose(aggregate(shifts, "mean")[0], direction * 2)
    assert torch.allclose(aggregate(shifts, "pca")[0], direction * 2, atol=1e-6)
    assert torch.allclose(aggregate(-shifts, "pca")[0], -direction * 2, atol=1e-6)  # sign follows the mean


def test_alpha_zero_equals_vanilla_logits_and_tokens(vlm, convs, vectors):
    base_logits = vlm.forward(convs).logits
    vecs = SteeringVectors.load(vectors)
    with steer(vlm, vecs.vectors, alpha=0.0, layers=vecs.layers):
        assert torch.equal(vlm.forward(convs).logits, base_logits)
    plain = vlm.generate(convs, GREEDY).token_ids
    got = [r.token_ids for r in build_defense(f"cmrm:vectors={vectors},alpha=0").generate(vlm, convs, GREEDY)]
    assert got == plain


def test_context_exit_restores_the_model_exactly(vlm, convs, vectors):
    before = vlm.forward(convs).logits
    vecs = SteeringVectors.load(vectors)
    with steer(vlm, vecs.vectors * 50, alpha=1.0, layers=vecs.layers):
        during = vlm.forward(convs).logits
    assert not torch.allclose(before, during)
    assert torch.equal(vlm.forward(convs).logits, before)
    counts = [len(layer._forward_hooks) for layer in vlm.decoder_layers()]
    with pytest.raises(RuntimeError), steer(vlm, vecs.vectors, alpha=1.0, layers=vecs.layers):
        raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in vlm.decoder_layers()] == counts


def test_sample_level_batch_equals_rows_alone(vlm, convs):
    cmrm = build_defense("cmrm:level=sample,alpha=20")
    batched = cmrm.generate(vlm, convs, GREEDY)
    for i, conv in enumerate(convs):
        assert cmrm.generate(vlm, [conv], GREEDY)[0].token_ids == batched[i].token_ids
    assert batched[1].details["shift_norm"] == 0.0  # no image: nothing to remove


def test_sample_level_vectors_are_per_row(vlm, convs):
    shifts, _ = shift_vectors(vlm, convs)
    assert shifts.shape == (3, vlm.num_layers, vlm.hidden_size)
    assert shifts[1].abs().max() < 1e-5 and shifts[0].abs().max() > 0


@pytest.mark.parametrize("positions", ["all", "last_and_generated", "generated"])
def test_hooks_touch_only_the_positions_asked_for(load_tiny, convs, positions):
    vlm = load_tiny("llava")
    layers = vlm.decoder_layers()
    last = vlm.num_layers - 1
    v = torch.zeros(vlm.num_layers, vlm.hidden_size)
    v[last] = 1.0  # only the last layer is shifted, so its recorded output shows the shift exactly
    cfg = GenerationConfig(max_new_tokens=3)
    # forward hooks run in registration order: `raw` sees the layer's own output, `shifted` the output
    # after the steering hook, in the very same call
    with (
        capture_layer_outputs([layers[last]]) as raw,
        steer(vlm, v, alpha=2.0, layers=list(range(vlm.num_layers)), positions=positions),
        capture_layer_outputs([layers[last]]) as shifted,
    ):
        vlm.generate(convs[:1], cfg)
    diffs = [b - a for a, b in zip(raw[0], shifted[0], strict=True)]
    assert len(diffs) == cfg.max_new_tokens  # one prefill + decoding steps
    prefill_diff, decode_diffs = diffs[0], diffs[1:]
    two = torch.full((vlm.hidden_size,), 2.0)
    if positions == "all":
        assert torch.allclose(prefill_diff, two.expand_as(prefill_diff), atol=1e-5)
    elif positions == "last_and_generated":
        assert torch.allclose(prefill_diff[:, -1], two[None], atol=1e-5)
        assert prefill_diff[:, :-1].abs().max() == 0
    else:
        assert prefill_diff.abs().max() == 0
    for d in decode_diffs:
        assert torch.allclose(d, two.expand_as(d), atol=1e-5)


def test_artifact_reloads_bit_identically(vlm, convs, tmp_path):
    vecs = calibrate_cmrm(vlm, [convs[0]], aggregator="pca", corruption="noise", seed=5)
    path = vecs.save(tmp_path / "a.safetensors")
    again = SteeringVectors.load(path)
    assert torch.equal(again.vectors, vecs.vectors) and again.layers == vecs.layers
    assert again.metadata == vecs.metadata
    assert again.metadata["aggregator"] == "pca" and again.metadata["corruption"] == "noise"


def test_mismatched_artifact_is_refused(load_tiny, convs, tmp_path):
    llava = load_tiny("llava")
    vecs = calibrate_cmrm(llava, [convs[0]])
    wrong = SteeringVectors(torch.zeros(len(vecs.layers), vecs.hidden_size + 1), vecs.layers, vecs.metadata)
    with pytest.raises(UserInputError, match="hidden size"):
        wrong.check_compatible(llava)
    deeper = SteeringVectors(vecs.vectors, vecs.layers, {**vecs.metadata, "num_layers": "7"})
    path = deeper.save(tmp_path / "deeper.safetensors")
    # through the defense, as a user would meet it: refused before any generation
    with pytest.raises(UserInputError, match="7 decoder layers"):
        build_defense(f"cmrm:vectors={path}").generate(llava, convs[:1], GREEDY)


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        SteeringVectors.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match="safetensors"):
        SteeringVectors.load(junk)
    with pytest.raises(UserInputError, match="vectors=PATH"):
        build_defense("cmrm")
    with pytest.raises(UserInputError, match="positions"):
        build_defense("cmrm:level=sample,positions=some")


def test_layer_selection():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("1:3", 4) == [1, 2]
    assert parse_layers("0;-1", 4) == [0, 3]
    with pytest.raises(UserInputError):
        parse_layers("9", 4)
