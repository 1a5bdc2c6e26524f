"""Find stage 2's benign requests that the aligned backbone over-refuses as text (hard look-alikes).

The aligned backbone (SmolLM2 + the stage 1 LoRA from ``--artifacts``) answers each of stage 2's benign
requests (``data.vision_benign_prompts()``, text only, greedy, 16 new tokens, bfloat16, one thread);
the keyword judge marks refusals. ``--pool all`` (v2d) also searches ``data.mining_pool()``, further
look-alike pairs no fixed set uses (``gen_answers.py --mined FILE`` then answers the refused ones). ``train_vision.py --mined FILE`` repeats those requests (each still
a benign request after an unrelated image, answered by the base model): visual instruction data
answered helpfully, with the look-alikes the backbone gets wrong well represented. Nothing harmful is
added, and no benchmark prompt is involved.

    PYTHONPATH=scripts/demo .venv/bin/python scripts/demo/mine_lookalikes.py [--artifacts DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

torch.set_num_threads(1)

import data  # noqa: E402

from vlmshield.demo._build import ARTIFACTS, load_backbone, merge_lora  # noqa: E402
from vlmshield.judges.keyword import refusal_match  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    ap.add_argument("--out", type=Path, default=Path(".cache/demo-build/mined.json"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--pool",
        choices=["stage2", "all"],
        default="all",
        help="stage2: stage 2's look-alikes only (v2c); all: + data.mining_pool() (v2d)",
    )
    args = ap.parse_args()
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tok, lm = load_backbone()
    merge_lora(lm.model, args.artifacts / "text_lora.safetensors")
    lm = lm.to(torch.bfloat16).eval()
    tok.padding_side = "left"
    tok.pad_token = "<|endoftext|>"
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [ex.prompt for ex in data.vision_benign_prompts()]
    if args.pool == "all":
        prompts += [ex.prompt for ex in data.mining_pool()]
    refused: list[str] = []
    for b in range(0, len(prompts), args.batch_size):
        chunk = prompts[b : b + args.batch_size]
        texts = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = lm.generate(
                **enc, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id
            )
        answers = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        refused += [p for p, a in zip(chunk, answers, strict=True) if refusal_match(a.strip())["refused"]]
    out.write_text(json.dumps({"refused": refused, "of": len(prompts)}, indent=1) + "\n")
    print(f"{len(refused)}/{len(prompts)} refused as text -> {out}")


if __name__ == "__main__":
    main()
