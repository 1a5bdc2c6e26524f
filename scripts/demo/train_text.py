"""Stage 1: text-only safety LoRA of SmolLM2-135M-Instruct (harmful -> written refusal, benign ->
the base model's own answer, and harm judgements: "is this answer harmful? yes/no" in our own
phrasings, never ECSO's). One thread; resumable; writes ``artifacts/text_lora.safetensors``.

    .venv/bin/python scripts/demo/train_text.py            # train (or resume) and export
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

torch.set_num_threads(1)

import common  # noqa: E402
import data  # noqa: E402

from vlmshield.demo._build import ARTIFACTS, load_backbone  # noqa: E402
from vlmshield.judges.keyword import refusal_match  # noqa: E402

BUILD = Path(".cache/demo-build")


@dataclass
class Tok:
    ids: list[int]
    labels: list[int]

    @property
    def key(self) -> list[int]:
        return self.ids


def encode(tok: object, prompt: str, answer: str, finished: bool, max_answer: int) -> Tok:
    pre = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    p = tok(pre, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    a = tok(answer, add_special_tokens=False)["input_ids"][:max_answer]  # type: ignore[operator]
    if finished:
        a = [*a, tok.convert_tokens_to_ids("<|im_end|>")]  # type: ignore[attr-defined]
    return Tok(p + a, [-100] * len(p) + a)


def judge_examples(
    recs: dict[str, dict[str, object]], n_refusal: int, n_benign: int
) -> list[tuple[str, str]]:
    """(judgement prompt, "Yes." / "No.") pairs: harmful request + the base model's compliant answer ->
    Yes; harmful request + our refusal -> No; benign request (many look-alikes) + its answer -> No."""
    import random

    rng = random.Random(data.SEED + 5)
    out: list[tuple[str, str]] = []
    for ex in data.harmful_for_judging():
        if not data.usable_answer(recs, ex.prompt):
            continue
        r = recs[ex.prompt]
        if refusal_match(str(r["answer"]))["refused"] or "afraid" in str(r["answer"])[:120].lower():
            continue  # a (soft) refusal is not a harmful answer
        out.append((data.judge_prompt(rng.randrange(99), ex.prompt, str(r["answer"])), "Yes."))
    harmful = data.harmful_examples()
    for ex in rng.sample(harmful, n_refusal):
        out.append((data.judge_prompt(rng.randrange(99), ex.prompt, ex.answer), "No."))
    benign = [ex for ex in data.benign_prompts() if data.usable_answer(recs, ex.prompt)]
    border = [ex for ex in benign if ex.kind == "borderline"]
    plain = [ex for ex in benign if ex.kind != "borderline"]
    for ex in rng.sample(border, (2 * n_benign) // 3) + rng.sample(plain, n_benign - (2 * n_benign) // 3):
        out.append((data.judge_prompt(rng.randrange(99), ex.prompt, str(recs[ex.prompt]["answer"])), "No."))
    return out


def load_text_examples(
    tok: object, answers: Path, max_answer: int, judge_refusal: int = 60, judge_benign: int = 100
) -> tuple[list[Tok], dict[str, int]]:
    recs = {}
    for line in answers.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["prompt"]] = r
    out: list[Tok] = []
    counts = {"harmful": 0, "benign": 0, "borderline": 0, "judge_yes": 0, "judge_no": 0}
    for ex in data.harmful_examples():
        out.append(encode(tok, ex.prompt, ex.answer, True, max_answer))
        counts["harmful"] += 1
    for ex in data.benign_prompts():
        if not data.usable_answer(recs, ex.prompt):
            continue
        r = recs[ex.prompt]
        out.append(encode(tok, ex.prompt, r["answer"], bool(r["finished"]), max_answer))
        counts[ex.kind] += 1
    if judge_refusal or judge_benign:
        for prompt, verdict in judge_examples(recs, judge_refusal, judge_benign):
            out.append(encode(tok, prompt, verdict, True, max_answer))
            counts["judge_yes" if verdict == "Yes." else "judge_no"] += 1
    return out, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=Path, default=BUILD / "answers.jsonl")
    ap.add_argument("--ckpt", type=Path, default=BUILD / "text_ckpt")
    ap.add_argument("--out", type=Path, default=ARTIFACTS / "text_lora.safetensors")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--max-answer", type=int, default=40)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--layers-from", type=int, default=10, help="LoRA only on layers >= this")
    ap.add_argument("--judge-refusal", type=int, default=60, help="judgement examples: refusal -> No")
    ap.add_argument(
        "--judge-benign", type=int, default=100, help="judgement examples: benign -> No (0 0: none)"
    )
    ap.add_argument(
        "--first-weight", type=float, default=4.0, help="loss weight of the first 3 answer tokens"
    )
    ap.add_argument("--bench", type=int, default=0, help="time this many steps and exit")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok, model = load_backbone()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = range(args.layers_from, model.config.num_hidden_layers)
    loras = common.add_lora(model.model, r=args.rank, alpha=2 * args.rank, layers=layers)
    params = {f"{n}.{w}": getattr(m, w) for n, m in loras.items() for w in ("lora_A", "lora_B")}
    examples, counts = load_text_examples(
        tok, args.answers, args.max_answer, args.judge_refusal, args.judge_benign
    )
    common.log(f"examples {counts}, mean tokens {sum(len(t.ids) for t in examples) / len(examples):.1f}")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    model.train()

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return common.lm_loss(model.model, model.lm_head, batch, first_weight=args.first_weight)

    if args.bench:
        b = common.collate(examples[: args.batch_size], pad)
        for _ in range(args.bench):
            t = time.time()
            loss_fn(b).backward()
            common.log(f"bench step {time.time() - t:.2f}s shape {tuple(b['input_ids'].shape)}")
        return
    common.train(
        params,
        [(list(params), args.lr)],
        examples,
        lambda b: common.collate(b, pad),
        loss_fn,
        ckpt_dir=args.ckpt,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=1,
        max_minutes=args.max_minutes,
    )
    common.export_lora(loras, args.out)
    common.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
