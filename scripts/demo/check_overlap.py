"""Check that the demo's training prompts are disjoint from the evaluation prompts.

Compares every training prompt (harmful + benign + borderline, stage 1 and 2, judged + image questions) with the ``mini``
benchmark's queries and instructions and with FigStep SafeBench (500 questions, when ``../shared`` has
them): exact matches after normalisation, and content-word Jaccard similarity. Prints the closest pairs
and exits 1 if any pair reaches ``--max-jaccard``.

    PYTHONPATH=scripts/demo .venv/bin/python scripts/demo/check_overlap.py
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import data

MINI = Path("src/vlmshield/benchmarks/data/mini.json")
SAFEBENCH = Path("../shared/data/figstep/data/question/safebench.csv")
_STOP_WORDS = (
    "a an the i my me to of in on at for with and or how do can what is it that this be are you your "
    "without so from as by into best way give tell write make get some someone"
)
STOP = set(_STOP_WORDS.split())


def words(s: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", s.lower()) if w not in STOP}


def norm(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", s.lower()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-jaccard", type=float, default=0.5)
    args = ap.parse_args()
    train = [e.prompt for e in data.harmful_examples()] + [e.prompt for e in data.benign_prompts()]
    train += [e.prompt for e in data.vision_benign_prompts()] + [e.prompt for e in data.harmful_for_judging()]
    train += [e.prompt for e in data.mining_pool()]
    train += sorted({it.question for it in data.vision_items()})
    evals: list[tuple[str, str]] = []
    for it in json.loads(MINI.read_text())["items"]:
        evals += [("mini", it["query"]), ("mini", it["instruction"])]
    if SAFEBENCH.exists():
        with SAFEBENCH.open() as f:
            evals += [("safebench", r["question"]) for r in csv.DictReader(f)]
    exact = {norm(e) for _, e in evals} & {norm(t) for t in train}
    tw = [(t, words(t)) for t in set(train)]
    best: list[tuple[float, str, str, str]] = []
    for src, e in evals:
        ew = words(e)
        for t, w in tw:
            j = len(ew & w) / max(1, len(ew | w))
            best.append((j, src, e, t))
    best.sort(reverse=True)
    print(
        f"{len(set(train))} training prompts vs {len(evals)} evaluation prompts; exact matches: {len(exact)}"
    )
    for j, src, e, t in best[:10]:
        print(f"  {j:.2f} [{src}] {e!r} ~ {t!r}")
    bad = exact or (best and best[0][0] >= args.max_jaccard)
    print(
        "FAIL"
        if bad
        else f"OK: no exact match, max content-word Jaccard {best[0][0]:.2f} < {args.max_jaccard}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
