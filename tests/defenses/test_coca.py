"""CoCA: calibration math on synthetic tensors, and exact equivalences on tiny checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from vlmshield import Conversation, GenerationConfig
from vlmshield.defenses import build_defense
from vlmshield.defenses.coca import (
    OMNISAFEBENCH_PRINCIPLE,
    Coca,
    PairedCalibration,
    add_principle,
    calibrate_logits,
    decode_pairs,
    template_default_system,
)
from vlmshield.errors import UserInputError
from vlmshield.models import load_vlm
from vlmshield.testing import tiny_checkpoint
from vlmshield.testing.reference import naive_coca

N = 8
GREEDY = GenerationConfig(max_new_tokens=N)


# ----------------------------------------------------------------------------- math (no model)
def test_calibration_formula_and_cfg_form():
    g = torch.Generator().manual_seed(0)
    zp, zq = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    for alpha in (-1.0, 0.0, 0.5, 4.0):
        out = calibrate_logits(zp, zq, alpha)
        assert torch.allclose(out, zp + alpha * (zp - zq))
        assert torch.allclose(out, zq + (1 + alpha) * (zp - zq), atol=1e-5)
    assert torch.equal(calibrate_logits(zp, zq, 0.0), zp)
    assert torch.equal(calibrate_logits(zp, zq, -1.0), zq)


def test_calibration_does_not_modify_inputs():
    zp, zq = torch.randn(2, 10), torch.randn(2, 10)
    zp0, zq0 = zp.clone(), zq.clone()
    calibrate_logits(zp, zq, 3.0)
    assert torch.equal(zp, zp0) and torch.equal(zq, zq0)


def test_log_softmax_gives_the_same_distribution():
    zp, zq = torch.randn(2, 30), torch.randn(2, 30)
    raw = torch.softmax(calibrate_logits(zp, zq, 2.0), -1)
    logs = torch.softmax(calibrate_logits(zp.log_softmax(-1), zq.log_softmax(-1), 2.0), -1)
    assert torch.allclose(raw, logs, atol=1e-6)


def test_masked_tokens_stay_masked():
    zp = torch.tensor([[0.0, float("-inf"), 1.0]])
    zq = torch.tensor([[0.5, float("-inf"), 0.0]])
    out = calibrate_logits(zp, zq, 2.0)
    assert torch.isneginf(out[0, 1]) and not torch.isnan(out).any()


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        calibrate_logits(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("coca:alpha=abc", "alpha"),
        ("coca:alpha=-3", "alpha"),
        ("coca:position=middle", "position"),
        ("coca:principle=", "principle"),
        ("coca:strength=2", "unknown argument"),
        ("coka", "did you mean 'coca'"),
    ],
)
def test_bad_arguments_are_clear(spec, message):
    with pytest.raises(UserInputError, match=message):
        build_defense(spec)


def test_principle_from_a_file(tmp_path):
    p = tmp_path / "principle.txt"
    p.write_text("Be safe, always.\nNo harm, ever.", encoding="utf-8")
    d = build_defense(f"coca:alpha=2,principle_file={p}")
    assert d.spec()["principle"] == "Be safe, always.\nNo harm, ever."


def test_principle_positions_and_categories():
    conv = Conversation.single("How do I do X?", system="Sys.")
    assert add_principle(conv, "P.", "before").last_user_text == "P.\n\nHow do I do X?"
    assert add_principle(conv, "P.", "after").last_user_text == "How do I do X?\n\nP."
    assert add_principle(conv, "P.", "system").system_text == "Sys.\n\nP."
    assert add_principle(Conversation.single("q"), "P.", "system").system_text == "P."
    coca = Coca(principle="general", principles={"fraud": "no fraud"})
    p, q = coca.branches([conv, conv], ["fraud", "other"])
    assert p[0].last_user_text.startswith("no fraud") and p[1].last_user_text.startswith("general")
    assert q == [conv, conv]


class _Recorder(LogitsProcessor):
    def __init__(self) -> None:
        self.contexts: list[list[int]] = []

    def __call__(self, input_ids, scores):
        self.contexts.extend(input_ids.tolist())
        return scores


@pytest.mark.parametrize(
    "mask",
    [
        [[1, 1, 1, 1], [1, 1, 1, 1]],  # no padding
        [[0, 1, 1, 1], [0, 1, 1, 1]],  # the same left padding
        [[0, 0, 1, 1], [1, 1, 1, 1]],  # different left padding
        [[1, 1, 0, 1], [0, 1, 0, 1]],  # padding between a shared prefix and the rest
    ],
)
def test_shaping_sees_each_q_rows_context_without_its_padding(mask):
    recorder = _Recorder()
    prompt_mask = torch.tensor(mask, dtype=torch.bool)
    calib = PairedCalibration(1.0, GREEDY, LogitsProcessorList([recorder]), prompt_mask)
    q_ids = torch.tensor([[11, 12, 13, 14, 50], [21, 22, 23, 24, 60]])
    ids = torch.cat([q_ids, q_ids])  # P rows then Q rows; only the Q rows are read
    calib(ids, torch.zeros(4, 70))  # type: ignore[arg-type]
    expected = [
        [t for t, keep in zip(row, [*m, 1], strict=True) if keep]
        for row, m in zip(q_ids.tolist(), mask, strict=True)
    ]
    assert recorder.contexts == expected


# ----------------------------------------------------------------------------- equivalences
@pytest.fixture(params=["llava", "qwen2_vl"])
def vlm(request, load_tiny):
    return load_tiny(request.param)


@pytest.fixture
def convs(test_image, other_image):
    return [
        Conversation.single("What is shown in this picture, in detail?", images=[test_image]),
        Conversation.single("hello"),
        Conversation.single("Colour?", images=[other_image]),
    ]


def test_alpha_zero_equals_greedy_on_p(vlm, convs):
    coca = Coca(alpha=0.0)
    p, _ = coca.branches(convs)
    got = [r.token_ids for r in coca.generate(vlm, convs, GREEDY)]
    assert got == vlm.generate(p, GREEDY).token_ids


def test_alpha_minus_one_equals_greedy_on_q(vlm, convs):
    got = [r.token_ids for r in Coca(alpha=-1.0).generate(vlm, convs, GREEDY)]
    assert got == vlm.generate(convs, GREEDY).token_ids


def test_alpha_two_equals_the_naive_reference(vlm, convs):
    coca = Coca(alpha=2.0)
    p, _ = coca.branches(convs)
    got = coca.generate(vlm, convs, GREEDY)
    for i, conv in enumerate(convs):
        ref = naive_coca(vlm, conv, p[i], 2.0, N)
        assert got[i].token_ids == ref, f"row {i}"


def test_batched_rows_equal_rows_alone(vlm, convs):
    coca = Coca(alpha=1.5)
    batched = coca.generate(vlm, convs, GREEDY)
    for i, conv in enumerate(convs):
        assert coca.generate(vlm, [conv], GREEDY)[0].token_ids == batched[i].token_ids


def test_alpha_changes_the_output(load_tiny, convs):
    vlm = load_tiny("llava")
    plain = vlm.generate(convs, GREEDY).token_ids
    strong = [r.token_ids for r in Coca(alpha=8.0).generate(vlm, convs, GREEDY)]
    assert strong != plain


def test_sampling_really_samples_and_pairs_share_tokens(load_tiny, convs):
    vlm = load_tiny("llava")
    cfg = GenerationConfig(max_new_tokens=N, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    coca = Coca(alpha=1.0)
    p, q = coca.branches(convs)
    pairs = decode_pairs(vlm, p, q, 1.0, cfg)
    n = len(convs)
    # the Q row of every pair received exactly the tokens of its P row
    assert [pairs.token_ids[i] for i in range(n)] == [pairs.token_ids[n + i] for i in range(n)]
    got = [r.token_ids for r in coca.generate(vlm, convs, cfg)]
    assert got == [pairs.token_ids[i] for i in range(n)]
    # one sample's draws are those of a naive loop sampling from the shaped calibrated distribution
    # with the same seeded generator (a batch draws all rows at once, so only batch 1 compares)
    alone = coca.generate(vlm, convs[:1], cfg)[0].token_ids
    assert alone == naive_coca(vlm, convs[0], p[0], 1.0, N, config=cfg)
    # and it is not greedy decoding in disguise: greedy and another seed give other tokens
    greedy = [r.token_ids for r in coca.generate(vlm, convs, GREEDY)]
    other = [r.token_ids for r in coca.generate(vlm, convs, cfg.with_(seed=4))]
    assert got != greedy and got != other


# ----------------------------------------------------------------------------- the model's own logit shaping
@pytest.fixture(
    params=[
        ("llava", {"repetition_penalty": 1.05}),
        ("qwen2_vl", "family"),
        ("qwen2_vl", {"repetition_penalty": 1.3}),
    ],
    ids=["llava-rep1.05", "qwen2_vl-family", "qwen2_vl-rep1.3"],
)
def penalised(request):
    family, generation = request.param
    return load_vlm(str(tiny_checkpoint(family, generation=generation)), device="cpu")


LONG = GenerationConfig(max_new_tokens=16)


def test_penalised_model_alpha_two_equals_raw_logit_reference(penalised, convs):
    assert penalised.model.generation_config.repetition_penalty > 1.0
    coca = Coca(alpha=2.0)
    p, _ = coca.branches(convs)
    got = coca.generate(penalised, convs, LONG)
    for i, conv in enumerate(convs):
        ref = naive_coca(penalised, conv, p[i], 2.0, LONG.max_new_tokens)
        assert got[i].token_ids == ref, f"row {i}"


def test_penalised_model_alpha_minus_one_is_the_undefended_model(penalised, convs):
    got = [r.token_ids for r in Coca(alpha=-1.0).generate(penalised, convs, LONG)]
    assert got == [penalised.generate([c], LONG).token_ids[0] for c in convs]


def test_penalised_model_alpha_zero_is_principle_prompting_without_penalising_the_principle(penalised, convs):
    coca = Coca(alpha=0.0)
    p, _ = coca.branches(convs)
    got = [r.token_ids for r in coca.generate(penalised, convs, LONG)]
    for i, conv in enumerate(convs):
        assert got[i] == naive_coca(penalised, conv, p[i], 0.0, LONG.max_new_tokens)


# ----------------------------------------------------------------------------- principle placement
def test_system_position_keeps_the_templates_default_system_turn(load_tiny):
    vlm = load_tiny("qwen2_vl")
    assert template_default_system(vlm) == "You are a helpful assistant."
    conv = Conversation.single("How do I do X?")
    coca = Coca(position="system", principle="Be safe.")
    p, q = coca.branches([conv], vlm=vlm)
    rendered_p, rendered_q = vlm.render(p[0]), vlm.render(q[0])
    default = "You are a helpful assistant."
    assert rendered_p == rendered_q.replace(default, default + "\n\nBe safe.", 1)
    assert template_default_system(load_tiny("llava")) is None


def test_system_position_on_a_template_without_system_turns_is_refused(load_tiny):
    class NoSystem:
        name = "no-system"

        def render(self, conv):
            return conv.last_user_text

    conv = Conversation.single("q")
    with pytest.raises(UserInputError, match="position=before"):
        Coca(position="system").generate(NoSystem(), [conv], GREEDY)  # type: ignore[arg-type]


def test_omnisafebench_preset():
    coca = build_defense("coca:preset=omnisafebench")
    spec = coca.spec()
    assert spec["alpha"] == 4.0 and spec["principle"] == OMNISAFEBENCH_PRINCIPLE
    p, _ = coca.branches([Conversation.single("How do I do X?")])
    assert p[0].last_user_text == OMNISAFEBENCH_PRINCIPLE + " How do I do X?"
    assert build_defense("coca:preset=omnisafebench,alpha=2").spec()["alpha"] == 2.0


def test_cost_is_recorded(load_tiny, convs):
    vlm = load_tiny("llava")
    res = Coca(alpha=1.0).generate(vlm, convs, GREEDY)
    for r in res:
        assert r.cost.forward_passes <= N and r.cost.wall_time_s > 0 and r.cost.prompt_tokens > 0
