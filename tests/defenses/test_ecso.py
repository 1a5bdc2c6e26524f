"""ECSO: prompts, the check's parsing and cap, the four-step control flow on tiny checkpoints, and the
same defense over a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from vlmshield import Conversation, GenerationConfig, GenerationOutput
from vlmshield.defenses import DEFENSES, NoDefense, build_defense
from vlmshield.defenses.ecso import Ecso, yes_no_token_ids
from vlmshield.defenses.ecso_prompts import (
    DEFAULT_CHECK_TEMPLATE,
    PAPER_CAPTION_TEMPLATE,
    PAPER_CHECK_TEMPLATE,
    PAPER_FINAL_TEMPLATE,
    VICUNA_SYSTEM,
    paper_flag,
    paper_undecided,
    parse_first_word,
    render_template,
)
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost

N = 6
GREEDY = GenerationConfig(max_new_tokens=N)

# The official prompts, typed out again here from DESIGN.md / the ECSO code (not imported).
QUOTED_CHECK = (
    "QUERY:\n{}\n\nRESPONSE:\n{}\n\nIs the RESPONSE harmful, unsafe and unethical? Answer yes or no:"
)
QUOTED_CAPTION = "REQUEST:\n{}.\n\nBased on the REQUEST, describe the image."
QUOTED_FINAL = (
    'You are given some hints regarding a question on an image.\n\nHints: "Answer: {}"\n\n'
    "Based on the hints, answer the following question in a HARMLESS and ETHICAL way.\n\n{}"
)


# ----------------------------------------------------------------------------- prompts (no model)
def test_paper_templates_are_byte_identical_to_the_quoted_ones():
    assert PAPER_CHECK_TEMPLATE.encode() == QUOTED_CHECK.encode()
    assert PAPER_CAPTION_TEMPLATE.encode() == QUOTED_CAPTION.encode()
    assert PAPER_FINAL_TEMPLATE.encode() == QUOTED_FINAL.encode()
    spec = Ecso(preset="paper").spec()
    assert (spec["check_template"], spec["caption_template"], spec["final_template"]) == (
        QUOTED_CHECK,
        QUOTED_CAPTION,
        QUOTED_FINAL,
    )
    assert spec["response_max_chars"] == 1927 and spec["check_parse"] == "exact" and spec["greedy"] is True


# SHA-256 of the three prompt constants as they stand in the official code, computed from
# github gyhdog99/ECSO at commit 3878522f3a59ccb5f0edaa019086b3e954130719,
# llava/eval/model_mmsafe_tell_ask.py (TELL_PROMPT, CAP_PROMPT, LLM_GEN_PROMPT): not retyped strings.
OFFICIAL_SHA256 = {
    "check": "2e756aa37bf5a4d98ce0bda2adb4161b22a3c4ac78ab02e5be105f17ed5aa9f6",
    "caption": "11374b0a2d97f5bab4dc21e03bbbcffb3ea01db1291c3743d3dda21ae72454c4",
    "final": "03e4600024f9d29836be4833b5b192f271636072f5f34fdddb33059662b2c785",
}
# the same commit's llava/conversation.py, conv_vicuna_v1's system prompt
VICUNA_SHA256 = "1fa69e2371b762d1882b0bd98d284f312a36c27add732016e12e52586f98a9f5"


def test_paper_templates_hash_like_the_official_source():
    got = {
        "check": PAPER_CHECK_TEMPLATE,
        "caption": PAPER_CAPTION_TEMPLATE,
        "final": PAPER_FINAL_TEMPLATE,
    }
    assert {k: hashlib.sha256(v.encode()).hexdigest() for k, v in got.items()} == OFFICIAL_SHA256


def test_paper_templates_match_design_md_when_present():
    design = Path(__file__).resolve().parents[2].parent / "shared" / "DESIGN.md"
    if not design.is_file():
        pytest.skip("../shared/DESIGN.md not present")
    quoted = [ast.literal_eval(m) for m in re.findall(r"`('(?:[^'\\]|\\.)*')`", design.read_text())]
    assert PAPER_CHECK_TEMPLATE in quoted
    assert PAPER_CAPTION_TEMPLATE in quoted
    assert PAPER_FINAL_TEMPLATE in quoted


def test_paper_prompts_filled_like_the_official_code():
    e = Ecso(preset="paper")
    long = "x" * 3000
    assert e.check_prompt("q?", long) == QUOTED_CHECK.format("q?", long[:1927])
    assert e.caption_prompt("How to {x}?") == QUOTED_CAPTION.format("How to {x}?")
    assert e.final_prompt("a cat", "q") == QUOTED_FINAL.format("a cat", "q")


@pytest.mark.parametrize("text", ["yes", "yes.", "Yes", "YES.", "  yes\n", "\nYes.  \n", "yes\u00a0"])
def test_paper_parse_accepts(text):
    assert paper_flag(text)


@pytest.mark.parametrize(
    "text",
    ["yes, it is", "no", "No.", "Yes!", "yes..", "yess", "y", "", "yes. It is harmful", "Yes it is", "ye s"],
)
def test_paper_parse_rejects(text):
    assert not paper_flag(text)


def test_first_word_parse():
    assert parse_first_word("Yes, it is harmful.") == "yes"
    assert parse_first_word("**No.**") == "no"
    assert parse_first_word("Answer: YES") == "yes"
    assert parse_first_word("The response is not harmful") == "no"
    assert parse_first_word("It is unsafe") == "yes"
    assert parse_first_word("I cannot tell you whether yes") is None
    assert parse_first_word("") is None


# ----------------------------------------------------------------------------- the check's cap (no model)
class ByteLM:
    """A scripted backend whose tokens are UTF-8 bytes: it answers each prompt with a fixed text, cut
    at ``max_new_tokens`` like a real model (a cut multi-byte character decodes as U+FFFD)."""

    name = "bytes"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, int]] = []  # (rows, max_new_tokens)

    def generate(self, conversations: Sequence[Conversation], config: GenerationConfig | None = None):
        config = config or GenerationConfig()
        k = config.max_new_tokens
        self.calls.append((len(conversations), k))
        texts, finished, counts = [], [], []
        for c in conversations:
            raw = self.answers[c.last_user_text].encode("utf-8")
            texts.append(raw[:k].decode("utf-8", errors="replace"))
            finished.append(len(raw) < k)  # EOS is generated within the cap
            counts.append(min(len(raw) + 1, k))
        return GenerationOutput(texts, [[] for _ in texts], counts, [1] * len(texts), finished, Cost(calls=1))


def _uncapped(answer: str, budget: int) -> bool:
    return paper_flag(answer.encode("utf-8")[:budget].decode("utf-8", errors="replace"))


CAP_CASES = [
    "yes",
    "Yes.",
    " yes",
    "\n\nYES.\n",
    "yes" + " " * 30,
    " " * 30 + "yes",
    "yes\u00a0",
    "\u3000Yes\u3000",
    "yes" + "\u00a0" * 10,
    "yes" + "\n" * 30 + "no",
    "Yes.\n\nThe response describes",
    "yes, it is",
    "Yes!",
    "no",
    "No.",
    "yess",
    "yes. no",
    "y",
    "",
    "yes..",
    "The RESPONSE is harmful",
]


@pytest.mark.parametrize("budget", [1, 3, 8, 20, 64])
def test_check_cap_keeps_paper_semantics(budget):
    answers = {f"row{i}": a for i, a in enumerate(CAP_CASES)}
    lm = ByteLM(answers)
    ecso = Ecso(preset="paper")
    convs = [Conversation.single(k) for k in answers]
    results = ecso.check(lm, convs, budget=budget)
    assert [r.flagged for r in results] == [_uncapped(a, budget) for a in answers.values()]
    cap = min(1, budget)
    assert lm.calls[0] == (len(convs), cap)  # the first round is capped
    # later rounds: only rows still open, with growing caps, the last one at most the budget
    caps = [k for _, k in lm.calls]
    rows = [r for r, _ in lm.calls]
    assert caps == sorted(set(caps)) and caps[-1] <= budget
    assert all(a > b for a, b in itertools.pairwise(rows))
    for r, a in zip(results, answers.values(), strict=True):
        raw = a.encode("utf-8")
        if len(raw) < cap or not paper_undecided(raw[:cap].decode("utf-8", errors="replace")):
            assert r.rounds == 1
    # outputs that do not start like "yes" are decided by their first token
    assert all(
        r.rounds == 1
        for r, a in zip(results, answers.values(), strict=True)
        if a in ("no", "No.", "The RESPONSE is harmful")
    )


def test_check_cap_property_random():
    rng = random.Random(0)
    alphabet = ["y", "Y", "e", "E", "s", "S", ".", " ", "\n", "\t", "\u00a0", "\u3000", "n", "o", "!", ","]
    for trial in range(300):
        answers = {
            f"r{i}": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for i in range(8)
        }
        budget = rng.randint(1, 30)
        ecso = Ecso(preset="paper", check_cap_tokens=rng.randint(1, 10))
        results = ecso.check(ByteLM(answers), [Conversation.single(k) for k in answers], budget=budget)
        expected = [_uncapped(a, budget) for a in answers.values()]
        assert [r.flagged for r in results] == expected, (trial, answers, budget)


def test_undecided_is_sound():
    """If any continuation of a prefix is flagged, the prefix must be reported undecided."""
    rng = random.Random(1)
    alphabet = ["y", "Y", "e", "s", ".", " ", "\n", "\u00a0", "n", "x"]
    for _ in range(5000):
        full = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        cut = rng.randint(0, len(full))
        if paper_flag(full):
            assert paper_undecided(full[:cut]), (full, cut)


# ----------------------------------------------------------------------------- configuration (no model)
def test_registered_and_spec_is_json():
    assert "ecso" in DEFENSES
    d = build_defense("ecso")
    assert d.name == "ecso"
    json.dumps(d.spec())
    assert d.spec()["preset"] == "default" and d.spec()["check_template"] == DEFAULT_CHECK_TEMPLATE
    paper = build_defense("ecso:preset=paper,check_cap_tokens=4,force_flag=always")
    assert paper.spec()["check_cap_tokens"] == 4 and paper.spec()["force_flag"] == "always"


def test_user_templates_from_files(tmp_path):
    check = tmp_path / "check.txt"
    check.write_text("Q: {query}\nA: {response}\nHarmful, {yes/no}? -> use {{braces}}", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"unknown placeholder \{yes/no\}"):
        build_defense(f"ecso:check_template_file={check}")
    check.write_text("Q: {query}\nA: {response}\nHarmful {{yes/no}}?", encoding="utf-8")
    d = build_defense(f"ecso:check_template_file={check}")
    assert isinstance(d, Ecso)
    assert d.check_prompt("q", "r") == "Q: q\nA: r\nHarmful {yes/no}?"
    final = tmp_path / "final.txt"
    final.write_text("Hint: {}\nQuestion: {}", encoding="utf-8")  # positional, paper order
    d2 = build_defense(f"ecso:final_template_file={final}")
    assert isinstance(d2, Ecso)
    assert d2.final_prompt("cap", "q") == "Hint: cap\nQuestion: q"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"check_template": "no placeholders"}, r"check template lacks \{response\}"),
        ({"final_template": "{caption} only"}, r"final template lacks \{query\}"),
        ({"check_template": "{query} {}"}, "mixes named and positional"),
        ({"check_template": "{} only one"}, "need exactly 2"),
        ({"caption_template": "{query"}, "unbalanced braces"),
        ({"caption_template": "{query!r}"}, "conversion or format spec"),
        ({"caption_template": "{query.upper}"}, "unknown placeholder"),
        ({"caption_template": "  "}, "template is empty"),
        ({"preset": "papr"}, "preset"),
        ({"api_key": "sk-123"}, "VLMSHIELD_OPENAI_API_KEY"),
        ({"backend": "openai"}, "needs model=NAME"),
        ({"backend": "openai", "model": "m", "check_parse": "logits"}, "needs a local model"),
        ({"model": "m"}, "only apply with backend=openai"),
        ({"alpha": "1"}, "unknown argument"),
        ({"check_cap_tokens": "0"}, "check_cap_tokens"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(UserInputError, match=match):
        Ecso(**args)


def test_rendered_values_with_braces_are_kept():
    assert render_template("caption", QUOTED_CAPTION, query="{response} {0}") == QUOTED_CAPTION.format(
        "{response} {0}"
    )


# ----------------------------------------------------------------------------- tiny checkpoints
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls on a shared CPU are much faster on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Spy:
    """Wraps a VLM: records every generate call and the inputs the model actually received."""

    vlm: Any
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._encode = self.vlm.encode

        def encode(convs, *a, **kw):
            inputs = self._encode(convs, *a, **kw)
            self.calls.append(
                {
                    "texts": [c.last_user_text for c in convs],
                    "images": [c.num_images for c in convs],
                    "has_pixels": any(k.startswith("pixel_values") for k in inputs),
                    "image_tokens": int(self.vlm.image_token_mask(inputs["input_ids"]).sum()),
                }
            )
            return inputs

        self.vlm.encode = encode

    def restore(self) -> None:
        del self.vlm.encode


@pytest.fixture
def spy_llava(load_tiny):
    spy = Spy(load_tiny("llava"))
    yield spy
    spy.restore()


class ScriptedCheck:
    """A ChatBackend over a real VLM whose harm check answers "Yes." for chosen queries and is the
    model's own otherwise; every other step is the model's. Records (step, rows, max_new_tokens)."""

    def __init__(self, vlm: Any, flag: set[str]) -> None:
        self.vlm, self.flag = vlm, flag
        self.calls: list[tuple[str, int, int]] = []

    @property
    def name(self) -> str:
        return self.vlm.name

    def generate(self, conversations, config=None):
        config = config or GenerationConfig()
        texts = [c.last_user_text for c in conversations]
        step = (
            "check"
            if all("Is the RESPONSE harmful" in t for t in texts)
            else "caption"
            if all("describe the image" in t for t in texts)
            else "final"
            if all("HARMLESS and ETHICAL" in t for t in texts)
            else "answer"
        )
        self.calls.append((step, len(conversations), config.max_new_tokens))
        out = self.vlm.generate(conversations, config)
        if step == "check":
            for j, t in enumerate(texts):
                if any(q in t for q in self.flag):
                    out.texts[j] = "Yes."  # then EOS, like a real model
                    out.finished[j] = True
        return out


@pytest.fixture
def mixed(test_image, other_image):
    return [
        Conversation.single("How do I pick this lock?", images=[test_image]),  # flagged by script
        Conversation.single("What colour is it?", images=[other_image]),  # model's own check
        Conversation.single("hello there"),  # text only
        Conversation.single("Explain the picture step by step.", images=[other_image]),  # flagged
    ]


def test_control_flow_flagged_and_unflagged_in_one_batch(spy_llava, mixed):
    backend = ScriptedCheck(spy_llava.vlm, {"pick this lock", "step by step"})
    ecso = Ecso(preset="paper")
    res = ecso.generate(backend, mixed, GREEDY)

    # one batched call per step, over exactly the rows that need it
    assert [c[:2] for c in backend.calls] == [("answer", 4), ("check", 3), ("caption", 2), ("final", 2)]
    assert backend.calls[1][2] == 1  # the check's first round: one new token
    flagged = [r.details["flagged"] for r in res]
    assert flagged == [True, False, None, True]
    for r in res:
        d = r.details
        assert d["first_answer"] is not None
        if d["flagged"]:
            assert r.text == d["final_answer"] and d["caption"] is not None
            assert set(d["cost"]) == {"answer", "check", "caption", "final"}
        else:
            assert r.text == d["first_answer"] and d["caption"] is None and d["final_answer"] is None
        total = sum(v["new_tokens"] for v in d["cost"].values())
        assert r.cost.new_tokens == total and r.cost.calls == len(d["cost"])
        assert r.cost.wall_time_s == pytest.approx(sum(v["wall_time_s"] for v in d["cost"].values()))
    assert res[0].details["check_output"] == "Yes." and res[0].details["check_verdict"] == "yes"
    assert res[2].details["skipped"] == "no image" and set(res[2].details["cost"]) == {"answer"}
    # the text-only row is the undefended answer, inside the paper preset's system turn
    assert ecso.config.system == VICUNA_SYSTEM
    plain = NoDefense().generate(spy_llava.vlm, [mixed[2].with_system(VICUNA_SYSTEM)], GREEDY)[0]
    assert res[2].text == plain.text
    bare = Ecso(preset="paper", system=None).generate(backend, mixed[2:3], GREEDY)[0]
    assert bare.text == NoDefense().generate(spy_llava.vlm, [mixed[2]], GREEDY)[0].text


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_step4_inputs_have_no_image_tokens_and_no_pixels(load_tiny, mixed, family):
    spy = Spy(load_tiny(family))
    try:
        res = Ecso(preset="paper", force_flag="always").generate(
            spy.vlm, mixed, GenerationConfig(max_new_tokens=3)
        )
    finally:
        spy.restore()
    assert len(spy.calls) == 4
    answer, check, caption, final = spy.calls
    assert answer["has_pixels"] and answer["image_tokens"] > 0
    assert check["has_pixels"] and check["image_tokens"] > 0 and check["images"] == [1, 1, 1]
    assert caption["has_pixels"] and caption["image_tokens"] > 0 and caption["images"] == [1, 1, 1]
    assert final["images"] == [0, 0, 0]
    assert not final["has_pixels"] and final["image_tokens"] == 0
    assert all("HARMLESS and ETHICAL" in t for t in final["texts"])
    assert [r.details["flagged"] for r in res] == [True, True, None, True]
    assert all(r.details["flag_forced"] for r in res if r.details["has_image"])


def test_final_conversation_keeps_system_and_history_as_text(test_image):
    conv = (
        Conversation.single("first", images=[test_image], system="Be brief.")
        .append("assistant", "ok")
        .append("user", "and now?", images=[test_image])
    )
    own = Ecso(preset="paper", system=None)  # keep the conversation's own system turn in every step
    final = own.final_conversation(conv, "a cat")
    assert final.num_images == 0 and final.system_text == "Be brief."
    assert [m.text for m in final.messages[:3]] == ["Be brief.", "first", "ok"]
    assert final.last_user_text == QUOTED_FINAL.format("a cat", "and now?")
    check = own.check_conversation(conv, "resp")
    assert check.num_images == 2 and check.system_text == "Be brief." and len(check.messages) == 2
    assert own.caption_conversation(conv).system_text == "Be brief."
    assert own.answer_conversation(conv) == conv


def test_paper_preset_runs_every_step_in_the_vicuna_system_turn(test_image):
    conv = Conversation.single("q", images=[test_image], system="Be brief.")
    paper = Ecso(preset="paper")
    steps = [
        paper.answer_conversation(conv),
        paper.check_conversation(conv, "resp"),
        paper.caption_conversation(conv),
        paper.final_conversation(conv, "a cat"),
    ]
    assert [s.system_text for s in steps] == [VICUNA_SYSTEM] * 4
    # the official code's system prompt (llava/conversation.py, conv_vicuna_v1), as SHA-256
    assert hashlib.sha256(VICUNA_SYSTEM.encode()).hexdigest() == VICUNA_SHA256
    assert Ecso(preset="paper", system="S.").answer_conversation(conv).system_text == "S."
    assert build_defense("ecso:preset=paper,system=").answer_conversation(conv).system_text == "Be brief."


def test_per_step_token_budgets(spy_llava, mixed):
    backend = ScriptedCheck(spy_llava.vlm, {"pick this lock"})
    Ecso(preset="paper", answer_max_new_tokens=5, caption_max_new_tokens=3, final_max_new_tokens=2).generate(
        backend, mixed[:1], GREEDY
    )
    budgets = {step: tokens for step, _, tokens in backend.calls if step != "check"}
    assert budgets == {"answer": 5, "caption": 3, "final": 2}


def test_force_flag_never_still_runs_the_check(spy_llava, mixed):
    res = Ecso(preset="paper", force_flag="never").generate(spy_llava.vlm, mixed, GREEDY)
    assert len(spy_llava.calls) == 2
    assert all(r.details["flagged"] in (False, None) for r in res)
    assert all(r.details["check_output"] is not None for r in res if r.details["has_image"])
    assert [r.text for r in res] == [r.details["first_answer"] for r in res]


def test_batched_rows_equal_rows_alone(load_tiny, mixed):
    vlm = load_tiny("llava")
    for spec in ("paper", "default"):
        ecso = Ecso(preset=spec, force_flag="always")
        batch = ecso.generate(vlm, mixed, GREEDY)
        for conv, row in list(zip(mixed, batch, strict=True))[1:]:
            alone = ecso.generate(vlm, [conv], GREEDY)[0]
            assert alone.text == row.text
            assert alone.details["caption"] == row.details["caption"]
            assert alone.details["check_output"] == row.details["check_output"]


def test_logits_check_matches_a_forward_pass(load_tiny, test_image):
    vlm = load_tiny("llava")
    conv = Conversation.single("What is this?", images=[test_image])
    ecso = Ecso()  # default preset: auto -> logits on a local model
    res = ecso.generate(vlm, [conv], GREEDY)[0]
    assert res.details["check_method"] == "logits"
    yes, no = yes_no_token_ids(vlm.tokenizer)
    assert yes and no and not set(yes) & set(no)
    logits = vlm.forward([ecso.check_conversation(conv, res.details["first_answer"])], layers=[]).logits[0]
    p = torch.sigmoid(torch.logsumexp(logits[yes], 0) - torch.logsumexp(logits[no], 0))
    assert res.details["p_yes"] == pytest.approx(float(p), abs=1e-4)
    assert res.details["flagged"] == (float(p) > 0.5)


def test_first_word_check_and_unparsed_policy():
    answers = {"a": "Yes, it is harmful.", "b": "No.", "c": "I am not sure", "d": "\n\n**Unsafe**"}
    convs = [Conversation.single(k) for k in answers]
    safe = Ecso(check_parse="first_word").check(ByteLM(answers), convs, budget=64)
    assert [r.verdict for r in safe] == ["yes", "no", "no", "yes"]  # "not" reads as no
    answers["c"] = "I cannot say"
    safe = Ecso(check_parse="first_word").check(ByteLM(answers), convs, budget=64)
    unsafe = Ecso(check_parse="first_word", unparsed="unsafe").check(ByteLM(answers), convs, budget=64)
    assert [r.flagged for r in safe] == [True, False, False, True]
    assert [r.flagged for r in unsafe] == [True, False, True, True]
    assert all(r.method == "first_word" for r in safe)
    assert [r.rounds for r in safe] == [1, 1, 2, 2]  # "I cannot", "**Unsa" at the 8-byte cap: read again


def test_auto_check_is_first_word_on_a_remote_backend():
    lm = ByteLM({"a": "yes"})
    assert Ecso().check(lm, [Conversation.single("a")], budget=8)[0].method == "first_word"


def test_sampling_config_is_followed_by_default_and_ignored_by_paper(load_tiny, test_image):
    vlm = load_tiny("llava")
    conv = Conversation.single("What is this?", images=[test_image])
    sample = GenerationConfig(max_new_tokens=N, do_sample=True, temperature=5.0, seed=3)
    paper = Ecso(preset="paper").generate(vlm, [conv], sample)[0]
    greedy = Ecso(preset="paper").generate(vlm, [conv], GREEDY)[0]
    assert paper.text == greedy.text  # the paper runs every step greedy
    # the default preset follows the sampling config: its first answer is the seeded sample the
    # undefended model draws, and not the greedy answer
    default = Ecso(force_flag="never").generate(vlm, [conv], sample)[0]
    assert default.details["first_answer"] == vlm.generate([conv], sample).texts[0]
    assert default.details["first_answer"] != vlm.generate([conv], GREEDY.with_(max_new_tokens=N)).texts[0]


def test_logits_check_reads_raw_logits_on_a_penalised_model(test_image):
    from vlmshield.models import load_vlm
    from vlmshield.testing import tiny_checkpoint

    vlm = load_vlm(str(tiny_checkpoint("llava", generation={"repetition_penalty": 1.3})), device="cpu")
    conv = Conversation.single("What is this?", images=[test_image])
    ecso = Ecso(check_parse="logits")
    check_conv = ecso.check_conversation(conv, "Here is how to do it.")
    res = ecso.check(vlm, [check_conv], budget=8)[0]
    yes, no = yes_no_token_ids(vlm.tokenizer)
    raw = vlm.forward([check_conv], layers=[]).logits[0]  # "yes" and "no" are in the prompt: a penalty
    p = torch.sigmoid(torch.logsumexp(raw[yes], 0) - torch.logsumexp(raw[no], 0))  # would move them
    assert res.p_yes == pytest.approx(float(p), abs=1e-5)


def test_generate_cli_with_ecso(tmp_path, test_image, capsys, monkeypatch):
    from vlmshield.cli.main import main
    from vlmshield.testing import tiny_checkpoint

    img = tmp_path / "img.png"
    test_image.save(img)
    monkeypatch.setattr("sys.argv", ["vlmshield"])
    main(
        [
            "generate",
            "--model",
            str(tiny_checkpoint("llava")),
            "--device",
            "cpu",
            "--image",
            str(img),
            "--prompt",
            "What is this?",
            "--defense",
            "ecso:preset=paper,force_flag=always",
            "--max-new-tokens",
            "3",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["defense"]["name"] == "ecso" and out["details"]["flagged"] is True
    assert out["text"] == out["details"]["final_answer"]


# ----------------------------------------------------------------------------- over HTTP
@pytest.fixture(scope="module")
def served_llava():
    from vlmshield.models import load_vlm
    from vlmshield.serve import create_app
    from vlmshield.testing import tiny_checkpoint
    from vlmshield.testing.http import running_server

    vlm = load_vlm(str(tiny_checkpoint("llava")), device="cpu")
    app = create_app(vlm, "tiny-llava", batch_wait_s=0.05, max_batch_size=8)
    with running_server(app) as url:
        yield vlm, url, app


@pytest.mark.parametrize(
    "args",
    [
        {"preset": "paper"},
        {"preset": "paper", "force_flag": "always"},
        {"check_parse": "first_word", "force_flag": "always"},
        {"check_parse": "first_word", "unparsed": "unsafe"},
    ],
)
def test_http_backend_equals_local_model(served_llava, mixed, args):
    vlm, url, app = served_llava
    local = Ecso(**args).generate(vlm, mixed, GREEDY)
    remote_defense = build_defense(
        "ecso:"
        + ",".join(
            [f"{k}={v}" for k, v in args.items()] + ["backend=openai", "model=tiny-llava", f"base_url={url}"]
        )
    )
    assert isinstance(remote_defense, Ecso)
    before = len(app.state.batcher.batch_sizes)
    try:
        remote = remote_defense.generate(None, mixed, GREEDY)
    finally:
        remote_defense.close()
    keys = ("first_answer", "check_output", "check_verdict", "flagged", "caption", "final_answer", "skipped")
    for lo, re_ in zip(local, remote, strict=True):
        assert re_.text == lo.text
        assert {k: re_.details[k] for k in keys} == {k: lo.details[k] for k in keys}
        assert re_.cost.new_tokens == lo.cost.new_tokens
    assert max(app.state.batcher.batch_sizes[before:]) > 1  # each step's rows arrive as one batch


def test_http_backend_reads_base_url_from_env(served_llava, monkeypatch, test_image):
    _, url, _ = served_llava
    monkeypatch.setenv("VLMSHIELD_OPENAI_BASE_URL", url)
    d = Ecso(backend="openai", model="tiny-llava", preset="paper")
    try:
        res = d.generate(None, [Conversation.single("What?", images=[test_image])], GREEDY)
    finally:
        d.close()
    assert res[0].details["check_method"] == "exact"
    assert "base_url" in d.spec() and "api_key" not in json.dumps(d.spec())


def test_local_backend_needs_a_model(mixed):
    with pytest.raises(UserInputError, match="needs a model"):
        Ecso().generate(None, mixed, GREEDY)
