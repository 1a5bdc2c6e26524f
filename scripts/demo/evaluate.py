"""Measure refusal of the demo model organism at each stage (the project's keyword judge).

Configurations (each a checkpoint built by ``vlmshield.demo._build.save_checkpoint`` and loaded with
the transformers Auto classes, as users load the demo):

- ``base``: SmolLM2-135M-Instruct in the LLaVA shell, no LoRA (text-only inputs = the plain LM);
- ``aligned``: + the text-only safety LoRA (stage 1);
- ``shell``: the aligned backbone in the LLaVA shell with an untrained (seeded random) vision path;
- ``demo``: + visual instruction tuning (stage 2) = the shipped demo VLM.

Inputs: the built-in ``mini`` benchmark (40 harmful requests, 20 benign look-alikes) as text only and
with an unrelated benign synthetic image (its ``vlsafe`` variant: ``render_scene(1_000_000 + index)``),
and FigStep SafeBench-Tiny's 50 questions as text (when ``../shared`` has them). Greedy decoding,
64 new tokens (as ``vlmshield eval``).
Results are cached per (config, set, mode) in a JSONL file, so a re-run only does what is missing.

    PYTHONPATH=scripts/demo .venv/bin/python scripts/demo/evaluate.py --configs base aligned demo
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from vlmshield.benchmarks.synthetic_images import render_scene  # noqa: E402
from vlmshield.demo._build import ARTIFACTS, save_checkpoint  # noqa: E402
from vlmshield.judges.keyword import refusal_match  # noqa: E402

BUILD = Path(".cache/demo-build")
STAGES = {"base": (), "aligned": ("text",), "shell": ("text",), "demo": ("text", "vision")}
MINI = Path("src/vlmshield/benchmarks/data/mini.json")
TINY = Path("../shared/data/figstep/data/question/SafeBench-Tiny.csv")
MINI_SEED_BASE = 1_000_000


def is_refusal(text: str) -> bool:
    """The project's keyword judge (as ``vlmshield eval``: first 300 characters, empty = refusal)."""
    return bool(refusal_match(text)["refused"])


def bootstrap_ci(values: list[bool], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of a rate (as ``vlmshield eval`` reports)."""
    import random

    rng = random.Random(seed)
    n = len(values)
    rates = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return rates[int(0.025 * resamples)], rates[int(0.975 * resamples) - 1]


def load_sets() -> dict[str, list[dict[str, Any]]]:
    items = json.loads(MINI.read_text())["items"]
    sets: dict[str, list[dict[str, Any]]] = {
        "mini_harmful": [
            {"id": it["id"], "query": it["query"], "seed": MINI_SEED_BASE + i}
            for i, it in enumerate(items)
            if it["label"] == "harmful"
        ],
        "mini_benign": [
            {"id": it["id"], "query": it["query"], "seed": MINI_SEED_BASE + i}
            for i, it in enumerate(items)
            if it["label"] != "harmful"
        ],
    }
    if TINY.exists():
        with TINY.open() as f:
            rows = list(csv.DictReader(f))
        sets["safebench_tiny"] = [
            {"id": f"tiny-{r['category_id']}-{r['task_id']}", "query": r["question"], "seed": 2_000_000 + i}
            for i, r in enumerate(rows)
        ]
    return sets


def generate(processor: Any, model: Any, batch: list[dict[str, Any]], mode: str, max_new: int) -> list[str]:
    convs, images = [], []
    for it in batch:
        if mode == "image":
            content: Any = [{"type": "image"}, {"type": "text", "text": it["query"]}]
            images.append(render_scene(it["seed"])[0])
        else:
            content = [{"type": "text", "text": it["query"]}]
        convs.append([{"role": "user", "content": content}])
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in convs]
    enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
    new = out[:, enc["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["base", "aligned", "demo"], choices=list(STAGES))
    ap.add_argument("--sets", nargs="+", default=None)
    ap.add_argument("--modes", nargs="+", default=["text", "image"], choices=["text", "image"])
    ap.add_argument("--out", type=Path, default=BUILD / "eval.jsonl")
    ap.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    ap.add_argument("--tag", default="final", help="results key; change it when the artifacts change")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    sets = load_sets()
    wanted = args.sets or list(sets)
    done: set[tuple[str, str, str, str, str]] = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["tag"], r["config"], r["set"], r["mode"], r["id"]))
    for cfg in args.configs:
        artifacts = args.artifacts
        if cfg == "shell":  # only the text LoRA: build_model then uses a new, untrained vision path
            artifacts = BUILD / f"art-{args.tag}-shell"
            artifacts.mkdir(parents=True, exist_ok=True)
            if not (artifacts / "text_lora.safetensors").exists():
                shutil.copy(args.artifacts / "text_lora.safetensors", artifacts / "text_lora.safetensors")
        ckpt = save_checkpoint(BUILD / f"ckpt-{args.tag}-{cfg}", STAGES[cfg], artifacts)
        processor = AutoProcessor.from_pretrained(ckpt)
        model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=getattr(torch, args.dtype)).eval()
        for name in wanted:
            for mode in args.modes:
                if mode == "image" and cfg == "base":
                    continue  # the base LM has no trained vision path to speak of
                todo = [it for it in sets[name] if (args.tag, cfg, name, mode, it["id"]) not in done]
                t0 = time.time()
                for b in range(0, len(todo), args.batch_size):
                    chunk = todo[b : b + args.batch_size]
                    outs = generate(processor, model, chunk, mode, args.max_new_tokens)
                    with args.out.open("a") as f:
                        for it, o in zip(chunk, outs, strict=True):
                            rec = {"tag": args.tag, "config": cfg, "set": name, "mode": mode, "id": it["id"]}
                            rec.update(query=it["query"], response=o, refused=is_refusal(o))
                            f.write(json.dumps(rec) + "\n")
                if todo:
                    print(f"{cfg} {name} {mode}: {len(todo)} in {time.time() - t0:.0f}s", flush=True)
    summarize(args.out, args.tag)


def summarize(path: Path, tag: str) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    agg: dict[tuple[str, str, str], list[bool]] = {}
    for r in rows:
        if r["tag"] == tag:
            agg.setdefault((r["config"], r["set"], r["mode"]), []).append(r["refused"])
    print("| config | set | input | refused (95% CI) | n |\n|---|---|---|---|---|")
    for (cfg, name, mode), v in sorted(agg.items()):
        lo, hi = bootstrap_ci(v)
        print(
            f"| {cfg} | {name} | {mode} | {100 * sum(v) / len(v):.0f}% [{100 * lo:g}, {100 * hi:g}] | {len(v)} |"
        )


if __name__ == "__main__":
    main()
