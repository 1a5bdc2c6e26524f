"""Small LoRA + training loop shared by the two training stages (one CPU thread, resumable).

Checkpoints are safetensors (trainable tensors, Adam moments) + a JSON state file; a re-run with the
same arguments resumes from the last checkpoint. The data order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * x @ A.T @ B.T`` with B initialised to zero (so it starts as the identity)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, seed: int) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / r
        g = torch.Generator().manual_seed(seed)
        a = torch.empty(r, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())


def add_lora(
    decoder: nn.Module, r: int, alpha: float, layers: Sequence[int] | None = None
) -> dict[str, LoRALinear]:
    """Wrap the projections of the decoder's layers (all, or ``layers``); returns name -> module,
    names relative to the decoder (``layers.3.self_attn.q_proj``)."""
    out: dict[str, LoRALinear] = {}
    targets = [
        (name, mod)
        for name, mod in decoder.named_modules()
        if isinstance(mod, nn.Linear) and name.split(".")[-1] in PROJ and name.startswith("layers.")
    ]
    for i, (name, mod) in enumerate(targets):
        if layers is not None and int(name.split(".")[1]) not in layers:
            continue
        parent_name, attr = name.rsplit(".", 1)
        parent = decoder.get_submodule(parent_name)
        lora = LoRALinear(mod, r, alpha, seed=1000 + i)
        setattr(parent, attr, lora)
        out[name] = lora
    return out


def export_lora(loras: dict[str, LoRALinear], path: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    scale = None
    for name, m in loras.items():
        tensors[f"{name}.lora_A"] = m.lora_A.detach().to(torch.float16).contiguous()
        tensors[f"{name}.lora_B"] = m.lora_B.detach().to(torch.float16).contiguous()
        scale = m.scale
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"scale": str(scale), "format": "vlmshield-demo-lora-1"})


def lm_loss(
    decoder: nn.Module,
    lm_head: nn.Module,
    batch: dict[str, torch.Tensor],
    first_weight: float = 1.0,
    first_n: int = 3,
) -> torch.Tensor:
    """Next-token cross-entropy on the labelled positions only (the LM head runs only there).

    ``first_weight``: weight of each row's first ``first_n`` answer tokens (the ones that decide between
    answering and refusing) relative to the rest; 1 = a plain token mean.
    """
    labels = batch["labels"]
    kw = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**kw).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    sel = target != -100
    logits = lm_head(hidden[sel]).float()
    if first_weight == 1.0:
        return nn.functional.cross_entropy(logits, target[sel])
    rank = sel.long().cumsum(dim=1) - 1  # index of each labelled position within its row's answer
    w = torch.where(rank < first_n, first_weight, 1.0)[sel]
    ce = nn.functional.cross_entropy(logits, target[sel], reduction="none")
    return (ce * w).sum() / w.sum()


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def train(
    params: dict[str, nn.Parameter],
    groups: list[tuple[list[str], float]],
    examples: list[Any],
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    ckpt_dir: Path,
    epochs: float,
    batch_size: int,
    seed: int,
    warmup: int = 5,
    ckpt_every: int = 10,
    max_minutes: float | None = None,
) -> None:
    """AdamW with linear warmup + cosine decay over ``epochs`` passes; batches are length-bucketed.

    ``groups``: (param names, peak lr). Resumes from ``ckpt_dir`` when it holds a checkpoint.
    """
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    opt = torch.optim.AdamW(
        [{"params": [params[n] for n in names], "lr": lr, "base_lr": lr} for names, lr in groups],
        weight_decay=0.0,
        betas=(0.9, 0.99),
    )
    names_in_order = [n for names, _ in groups for n in names]
    step = 0
    state_file = ckpt_dir / "state.json"
    if state_file.exists():
        st = json.loads(state_file.read_text())
        step = int(st["step"])
        tens = load_file(str(ckpt_dir / "train.safetensors"))
        with torch.no_grad():
            for n in names_in_order:
                params[n].copy_(tens[f"p/{n}"])
        for n in names_in_order:
            p = params[n]
            if f"m/{n}" in tens:
                opt.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tens[f"m/{n}"].clone(),
                    "exp_avg_sq": tens[f"v/{n}"].clone(),
                }
        log(f"resumed at step {step}/{total}")

    def batches_for_epoch(ep: int) -> list[list[Any]]:
        rng = random.Random(seed * 1000 + ep)
        idx = list(range(len(examples)))
        rng.shuffle(idx)
        # bucket: sort chunks of 8 batches by length to cut padding, keep randomness across chunks
        chunk = batch_size * 8
        out: list[list[Any]] = []
        for c in range(0, len(idx), chunk):
            part = sorted(idx[c : c + chunk], key=lambda i: len(examples[i].key))
            out.extend(
                [examples[i] for i in part[b : b + batch_size]] for b in range(0, len(part), batch_size)
            )
        rng.shuffle(out)
        return out

    def save() -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tens = {f"p/{n}": params[n].detach().contiguous() for n in names_in_order}
        for n in names_in_order:
            s = opt.state.get(params[n])
            if s:
                tens[f"m/{n}"] = s["exp_avg"].contiguous()
                tens[f"v/{n}"] = s["exp_avg_sq"].contiguous()
        save_file(tens, str(ckpt_dir / "train.safetensors.tmp"))
        (ckpt_dir / "train.safetensors.tmp").replace(ckpt_dir / "train.safetensors")
        state_file.write_text(json.dumps({"step": step, "total": total}))

    t0 = time.time()
    start = step
    losses: list[float] = []
    while step < total:
        ep, k = divmod(step, steps_per_epoch)
        batch = batches_for_epoch(ep)[k]
        lr_mult = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * max(lr_mult, 0.05)
        loss = loss_fn(collate(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([params[n] for n in names_in_order], 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 5 == 0 or step == total:
            el = time.time() - t0
            log(
                f"step {step}/{total} ep {ep} loss {sum(losses[-5:]) / len(losses[-5:]):.3f} "
                f"{el / (step - start):.1f} s/step"
            )
        if step % ckpt_every == 0 or step == total:
            save()
        if max_minutes is not None and (time.time() - t0) / 60 > max_minutes:
            save()
            log(f"time budget reached at step {step}/{total}; stopping early")
            break


def collate(batch: list[Any], pad: int) -> dict[str, torch.Tensor]:
    """Right-pad examples with ``ids`` / ``labels`` (and optional ``pixels``) into a training batch."""
    n = max(len(t.ids) for t in batch)
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for i, t in enumerate(batch):
        ids[i, : len(t.ids)] = torch.tensor(t.ids)
        lab[i, : len(t.ids)] = torch.tensor(t.labels)
        att[i, : len(t.ids)] = 1
    out = {"input_ids": ids, "labels": lab, "attention_mask": att}
    pix = [t.pixels for t in batch if getattr(t, "pixels", None) is not None]
    if pix:
        out["pixel_values"] = torch.stack(pix)
    return out
