"""Measure CMRM's modes on the demo VLM (or any model): the gap each layer closes, refusal,
over-refusal and fluency on ``mini`` (vlsafe variant), for a small sweep of alpha.

    .venv/bin/python scripts/cmrm_modes.py --model demo --out .cache/cmrm-modes

Dataset-level vectors are calibrated per mode on the same anchors as the shipped demo vectors
(``scripts/demo/calibrate_cmrm.py``: 64 synthetic scenes disjoint from ``mini``). The gap is measured
on mini's harmful inputs with their images (:func:`vlmshield.defenses.cmrm_gap.remaining_gap`).
Fluency: the share of answers that degenerate (a word 3-gram repeated 3+ times, or under 3 words) and
the mean distinct-bigram ratio. Results are cached per configuration in ``OUT/results.jsonl`` (a
re-run does only what is missing); the last line printed is one JSON object with every row, and a
Markdown table goes to ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import itertools

from vlmshield import GenerationConfig, load_vlm
from vlmshield.benchmarks import get_benchmark
from vlmshield.benchmarks.synthetic_images import render_scene
from vlmshield.conversation import Conversation
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import calibrate_cmrm
from vlmshield.defenses.cmrm_gap import remaining_gap
from vlmshield.judges.keyword import refusal_match

# the anchors of the shipped demo vectors (scripts/demo/calibrate_cmrm.py): 64 synthetic scenes
# disjoint from mini
sys.path.insert(0, str(Path(__file__).resolve().parent / "demo"))
from calibrate_cmrm import QUESTIONS as ANCHOR_QUESTIONS
from calibrate_cmrm import SEED0 as ANCHOR_SEED0
from calibrate_cmrm import N as ANCHORS

MODES = ("sequential", "increments", "compounding")


def fluency(texts: list[str]) -> tuple[float, float]:
    """(share degenerate, mean distinct-bigram ratio)."""
    degenerate, ratios = 0, []
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        counts: dict[tuple[str, ...], int] = {}
        for g in grams:
            counts[g] = counts.get(g, 0) + 1
        if len(words) < 3 or (counts and max(counts.values()) >= 3):
            degenerate += 1
        bigrams = list(itertools.pairwise(words))
        ratios.append(len(set(bigrams)) / len(bigrams) if bigrams else 0.0)
    return degenerate / max(len(texts), 1), sum(ratios) / max(len(ratios), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--out", type=Path, default=Path(".cache/cmrm-modes"))
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--levels", nargs="+", default=["dataset", "sample"])
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--gap-inputs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "results.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[row["config"]] = row

    vlm = load_vlm(args.model, device="cpu")
    samples = get_benchmark("mini").load(variant="vlsafe").samples
    convs = [s.to_conversation() for s in samples]
    harmful = [i for i, s in enumerate(samples) if s.label == "harmful"]
    benign = [i for i, s in enumerate(samples) if s.label == "benign"]
    gap_convs = [convs[i] for i in harmful[: args.gap_inputs]]
    anchors = [
        Conversation.single(
            ANCHOR_QUESTIONS[i % len(ANCHOR_QUESTIONS)], images=[render_scene(ANCHOR_SEED0 + i)[0]]
        )
        for i in range(ANCHORS)
    ]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)

    configs: list[tuple[str, str]] = [("none", "none")]
    for level in args.levels:
        for mode in args.modes:
            if level == "dataset":
                path = args.out / f"vectors-{mode}.safetensors"
                if not path.exists():
                    calibrate_cmrm(vlm, anchors, mode=mode).save(path)  # type: ignore[arg-type]
            for alpha in args.alphas:
                spec = (
                    f"cmrm:vectors={args.out / f'vectors-{mode}.safetensors'},alpha={alpha}"
                    if level == "dataset"
                    else f"cmrm:level=sample,mode={mode},alpha={alpha}"
                )
                configs.append((f"{level}/{mode}/{alpha:g}", spec))

    for name, spec in configs:
        if name in done:
            continue
        t0 = time.time()
        defense = build_defense(spec)
        texts: list[str] = []
        for b in range(0, len(convs), args.batch_size):
            texts += [r.text for r in defense.generate(vlm, convs[b : b + args.batch_size], cfg)]
        refused = [bool(refusal_match(t)["refused"]) for t in texts]
        gap = remaining_gap(vlm, gap_convs, defense) if name != "none" else [1.0] * vlm.num_layers  # type: ignore[arg-type]
        degenerate, distinct = fluency(texts)
        row: dict[str, Any] = {
            "config": name,
            "spec": spec,
            "refusal": sum(refused[i] for i in harmful) / len(harmful),
            "over_refusal": sum(refused[i] for i in benign) / len(benign),
            "degenerate": degenerate,
            "distinct2": distinct,
            "gap": gap,
            "seconds": round(time.time() - t0, 1),
            "example": texts[harmful[0]][:160],
        }
        with cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
        print(
            f"{name}: refusal {row['refusal']:.0%} over {row['over_refusal']:.0%} ({row['seconds']}s)",
            file=sys.stderr,
        )

    rows = [done[name] for name, _ in configs if name in done]
    n = vlm.num_layers
    marks = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})
    head = "| config | refusal | over-refusal | degenerate | distinct-2 | " + " | ".join(
        f"gap L{m}" for m in marks
    )
    lines = [head + " | gap mean |", "|" + "---|" * (6 + len(marks))]
    for r in rows:
        g = r["gap"]
        cells = " | ".join(f"{g[m]:.2f}" for m in marks)
        lines.append(
            f"| {r['config']} | {r['refusal']:.0%} | {r['over_refusal']:.0%} | {r['degenerate']:.0%} | "
            f"{r['distinct2']:.2f} | {cells} | {sum(g) / len(g):.2f} |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps({"model": args.model, "layers": n, "rows": rows}))


if __name__ == "__main__":
    main()
