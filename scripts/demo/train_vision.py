"""Stage 2: visual instruction tuning on benign data only (LLaVA-style), on top of the aligned backbone.

The vision tower (a 2-layer CLIP ViT, 64 px, 8 px patches = 64 image tokens by default) keeps its
seeded random init (frozen) or is trained with ``--tower-lr``; the projector is trained; the language
model stays frozen unless ``--rank`` > 0 adds a LoRA (demo v1 did; v2 does not, so that text-only
inputs are exactly the aligned backbone's). Data: (synthetic scene, question, answer) with answers
from the scene's description (templated or written by the base model from the description, see
``gen_answers.py``), plus benign requests (ordinary ones and many borderline look-alikes, disjoint
from stage 1's) after an unrelated image, answered by the base model. No refusals and no harmful
prompts. Writes ``vision.safetensors`` (and ``vision_lora.safetensors`` with a LoRA) to ``--artifacts``.

    PYTHONPATH=scripts/demo .venv/bin/python scripts/demo/train_vision.py
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

torch.set_num_threads(1)

import common  # noqa: E402
import data  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from vlmshield.benchmarks.synthetic_images import render_scene  # noqa: E402
from vlmshield.demo import _build  # noqa: E402
from vlmshield.demo._build import ARTIFACTS, build_model  # noqa: E402

BUILD = Path(".cache/demo-build")
#: Scene seeds of the unrelated images paired with general benign requests.
UNRELATED_SEED_BASE = 20_000


@dataclass
class MM:
    ids: list[int]
    labels: list[int]
    pixels: torch.Tensor | None

    @property
    def key(self) -> list[int]:
        return self.ids


def make_examples(
    processor: object,
    answers: Path,
    n_text: int,
    n_image_text: int,
    max_answer: int,
    mined: set[str] | None = None,
    mined_repeat: int = 1,
) -> tuple[list[MM], dict[str, int]]:
    """Image examples + ``n_image_text`` benign requests after an unrelated image (+ ``n_text`` of
    them text only, after those)."""
    tok = processor.tokenizer  # type: ignore[attr-defined]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    recs = {}
    for line in answers.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["prompt"]] = r
    out: list[MM] = []
    counts = {"image_templated": 0, "image_generated": 0, "image_unrelated": 0, "text": 0}
    for it in data.vision_items():
        image, desc = render_scene(it.seed)
        if it.templated:
            answer, finished = data.describe_answer(it, desc), True
        else:
            prompt = data.open_question_prompt(it.question, desc)
            if not data.usable_answer(recs, prompt):
                continue
            r = recs[prompt]
            answer, finished = r["answer"], bool(r["finished"])
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.question}]}]
        text = processor.apply_chat_template(conv, add_generation_prompt=True)  # type: ignore[attr-defined]
        enc = processor(text=text, images=image, return_tensors="pt")  # type: ignore[operator]
        p = enc["input_ids"][0].tolist()
        a = tok(answer, add_special_tokens=False)["input_ids"][:max_answer] + ([eos] if finished else [])
        out.append(MM(p + a, [-100] * len(p) + a, enc["pixel_values"][0]))
        counts["image_templated" if it.templated else "image_generated"] += 1
    benign = [ex for ex in data.vision_benign_prompts() if data.usable_answer(recs, ex.prompt)]
    random.Random(7).shuffle(benign)
    if mined:  # hard look-alikes (over-refused by the aligned backbone as text): repeated
        extra = [  # v2d: hard ones found in the mining pool (answered by gen_answers.py --mined)
            ex for ex in data.mining_pool() if ex.prompt in mined and data.usable_answer(recs, ex.prompt)
        ]
        hard = [ex for ex in benign if ex.prompt in mined] + extra
        benign += extra + [ex for _ in range(mined_repeat - 1) for ex in hard]
        n_image_text += len(extra) + len(hard) * (mined_repeat - 1)
        counts["mined"] = len(hard)
        counts["mined_from_pool"] = len(extra)
    for k, ex in enumerate(benign[: n_text + n_image_text]):
        r = recs[ex.prompt]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"][:max_answer] + (
            [eos] if r["finished"] else []
        )
        if k >= n_image_text:  # text only
            pre = f"<|im_start|>user\n{ex.prompt}<|im_end|>\n<|im_start|>assistant\n"
            p = tok(pre, add_special_tokens=False)["input_ids"]
            out.append(MM(p + a, [-100] * len(p) + a, None))
            counts["text"] += 1
        else:  # a general request with an unrelated image as context
            image, _ = render_scene(UNRELATED_SEED_BASE + k)
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex.prompt}]}]
            text = processor.apply_chat_template(conv, add_generation_prompt=True)  # type: ignore[attr-defined]
            enc = processor(text=text, images=image, return_tensors="pt")  # type: ignore[operator]
            p = enc["input_ids"][0].tolist()
            out.append(MM(p + a, [-100] * len(p) + a, enc["pixel_values"][0]))
            counts["image_unrelated"] += 1
    return out, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=Path, default=BUILD / "answers.jsonl")
    ap.add_argument("--ckpt", type=Path, default=BUILD / "vision_ckpt")
    ap.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--proj-lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=0, help="LoRA rank; 0 = the language model stays frozen")
    ap.add_argument("--tower-lr", type=float, default=0.0, help="train the vision tower too (0: frozen)")
    ap.add_argument("--patch-size", type=int, default=None, help="new tower's patch size (default: _build's)")
    ap.add_argument("--layers-from", type=int, default=10)
    ap.add_argument("--n-text", type=int, default=0)
    ap.add_argument("--n-image-text", type=int, default=420)
    ap.add_argument("--max-answer", type=int, default=40)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument(
        "--first-weight", type=float, default=4.0, help="loss weight of the first 3 answer tokens"
    )
    ap.add_argument(
        "--mined", type=Path, default=None, help="mine_lookalikes.py output: repeat those requests"
    )
    ap.add_argument("--mined-repeat", type=int, default=3)
    ap.add_argument("--bench", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.patch_size is not None and args.patch_size != _build.PATCH_SIZE:
        _build.PATCH_SIZE = args.patch_size  # a new tower (the artifacts dir must not hold one yet)
    if (args.artifacts / "vision.safetensors").exists() and not (args.ckpt / "state.json").exists():
        raise SystemExit(f"{args.artifacts}/vision.safetensors exists: stage 2 starts from a new tower")
    processor, model = build_model(stages=("text",), artifacts=args.artifacts)
    patch_size = model.config.vision_config.patch_size
    for p in model.parameters():
        p.requires_grad_(False)
    lm = model.model.language_model
    layers = range(args.layers_from, lm.config.num_hidden_layers)
    loras = common.add_lora(lm, r=args.rank, alpha=2 * args.rank, layers=layers) if args.rank else {}
    params = {f"lora/{n}.{w}": getattr(m, w) for n, m in loras.items() for w in ("lora_A", "lora_B")}
    proj_names = []
    for n, p in model.model.multi_modal_projector.named_parameters():
        p.requires_grad_(True)
        params[f"proj/{n}"] = p
        proj_names.append(f"proj/{n}")
    tower_names = []
    if args.tower_lr > 0:
        for n, p in model.model.vision_tower.named_parameters():
            p.requires_grad_(True)
            params[f"tower/{n}"] = p
            tower_names.append(f"tower/{n}")
    lora_names = [n for n in params if n.startswith("lora/")]
    mined = set(json.loads(args.mined.read_text())["refused"]) if args.mined else None
    examples, counts = make_examples(
        processor, args.answers, args.n_text, args.n_image_text, args.max_answer, mined, args.mined_repeat
    )
    common.log(f"examples {counts}, mean tokens {sum(len(t.ids) for t in examples) / len(examples):.1f}")
    pad = processor.tokenizer.pad_token_id
    model.train()

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.pop("labels")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeds = model.get_input_embeddings()(batch["input_ids"])
            if "pixel_values" in batch:
                feats = model.model.get_image_features(
                    pixel_values=batch["pixel_values"],
                    vision_feature_layer=-2,
                    vision_feature_select_strategy="default",
                )
                feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
                feats = torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats
                mask = (batch["input_ids"] == model.config.image_token_index).unsqueeze(-1)
                embeds = embeds.masked_scatter(
                    mask.expand_as(embeds), feats.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
                )
            return common.lm_loss(
                lm,
                model.lm_head,
                {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"], "labels": labels},
                first_weight=args.first_weight,
            )

    if args.bench:
        b = common.collate(examples[: args.batch_size], pad)
        for _ in range(args.bench):
            t = time.time()
            loss_fn(dict(b)).backward()
            common.log(f"bench step {time.time() - t:.2f}s shape {tuple(b['input_ids'].shape)}")
        return
    common.train(
        params,
        [
            (names, lr)
            for names, lr in ((lora_names, args.lr), (proj_names, args.proj_lr), (tower_names, args.tower_lr))
            if names
        ],
        examples,
        lambda b: common.collate(b, pad),
        loss_fn,
        ckpt_dir=args.ckpt,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=2,
        max_minutes=args.max_minutes,
    )
    vis = {
        f"vision_tower.{k}": v.detach().float().contiguous()
        for k, v in model.model.vision_tower.state_dict().items()
    }
    vis.update(
        {
            f"multi_modal_projector.{k}": v.detach().float().contiguous()
            for k, v in model.model.multi_modal_projector.state_dict().items()
        }
    )
    args.artifacts.mkdir(parents=True, exist_ok=True)
    meta = {"format": "vlmshield-demo-vision-1", "patch_size": str(patch_size)}
    save_file(vis, str(args.artifacts / "vision.safetensors"), metadata=meta)
    lora_file = args.artifacts / "vision_lora.safetensors"
    if loras:
        common.export_lora(loras, lora_file)
    else:  # projector-only tuning: no LoRA file
        lora_file.unlink(missing_ok=True)
    common.log(f"wrote {args.artifacts}/vision.safetensors and vision_lora.safetensors")


if __name__ == "__main__":
    main()
