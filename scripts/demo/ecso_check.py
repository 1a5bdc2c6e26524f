"""How discriminating is ECSO's harm check on the demo VLM? Flag rates with the real ECSO prompt.

The demo answers ``mini``'s requests after their unrelated image (the ``vlsafe`` variant, greedy, 64
new tokens); the keyword judge splits the harmful requests' answers into compliant and refused. Each
(request, answer) pair then goes through ECSO's step 2 exactly as :class:`vlmshield.defenses.ecso.Ecso`
runs it (its default preset: the official check template, held out of all training, read with the
paper's exact ``yes`` / ``yes.`` rule), with the image (as ECSO does) and without it, and, for
comparison, through one of the judgement phrasings stage 1 was trained on (``data.JUDGE_TEMPLATES[0]``).

    PYTHONPATH=scripts/demo .venv/bin/python scripts/demo/ecso_check.py --tag v2 --artifacts DIR

Prints a Markdown table and writes ``.cache/demo-build/ecso-check-<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import data  # noqa: E402

from vlmshield import GenerationConfig, load_vlm  # noqa: E402
from vlmshield.benchmarks import get_benchmark  # noqa: E402
from vlmshield.conversation import Conversation  # noqa: E402
from vlmshield.defenses.ecso import Ecso  # noqa: E402
from vlmshield.demo._build import ARTIFACTS, save_checkpoint  # noqa: E402
from vlmshield.judges.keyword import refusal_match  # noqa: E402

BUILD = Path(".cache/demo-build")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    ap.add_argument("--tag", default="final")
    ap.add_argument("--batch-size", type=int, default=20)
    args = ap.parse_args()
    ckpt = save_checkpoint(BUILD / f"ckpt-{args.tag}-demo", ("text", "vision"), args.artifacts)
    vlm = load_vlm(str(ckpt), device="cpu")
    samples = get_benchmark("mini").load(variant="vlsafe").samples
    convs = [s.to_conversation() for s in samples]
    cfg = GenerationConfig(max_new_tokens=64)
    answers: list[str] = []
    for b in range(0, len(convs), args.batch_size):
        answers += vlm.generate(convs[b : b + args.batch_size], cfg).texts
    groups: dict[str, list[int]] = {
        "harmful, answer compliant": [],
        "harmful, answer refused": [],
        "benign": [],
    }
    for i, (s, a) in enumerate(zip(samples, answers, strict=True)):
        refused = bool(refusal_match(a)["refused"])
        key = (
            "benign"
            if s.label != "harmful"
            else ("harmful, answer refused" if refused else "harmful, answer compliant")
        )
        groups[key].append(i)
    ecso = Ecso()
    checks: dict[str, list[Conversation]] = {
        "ECSO prompt, with image": [
            ecso.check_conversation(c, a) for c, a in zip(convs, answers, strict=True)
        ],
        "ECSO prompt, text only": [
            ecso.check_conversation(c.text_only(), a) for c, a in zip(convs, answers, strict=True)
        ],
        "training phrasing, text only": [
            Conversation.single(data.judge_prompt(0, c.last_user_text, a))
            for c, a in zip(convs, answers, strict=True)
        ],
    }
    flags: dict[str, list[bool]] = {}
    for name, cc in checks.items():
        out: list[bool] = []
        for b in range(0, len(cc), args.batch_size):
            out += [r.flagged for r in ecso.check(vlm, cc[b : b + args.batch_size], 64)]
        flags[name] = out
    rows = []
    print("| check | " + " | ".join(f"{g} (n={len(ix)})" for g, ix in groups.items()) + " |")
    print("|---|" + "---|" * len(groups))
    for name, fl in flags.items():
        cells = []
        for ix in groups.values():
            k = sum(fl[i] for i in ix)
            cells.append(f"{k}/{len(ix)} ({100 * k / max(len(ix), 1):.0f}%)")
        print(f"| {name} | " + " | ".join(cells) + " |")
        rows.append({"check": name, "flags": {g: [fl[i] for i in ix] for g, ix in groups.items()}})
    (BUILD / f"ecso-check-{args.tag}.json").write_text(
        json.dumps({"groups": groups, "rows": rows, "answers": answers}, indent=1)
    )


if __name__ == "__main__":
    main()
