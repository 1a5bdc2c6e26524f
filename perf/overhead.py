"""What each defense costs next to the undefended model, at real sizes, on a CPU or a GPU.

    python perf/overhead.py --size 0.5b --device cpu --max-new-tokens 64 --batches 1 8
    python perf/overhead.py --size 7b --device cuda --dtype bfloat16 --max-new-tokens 256 --batches 1 8 32
    python perf/overhead.py --model llava-hf/llava-1.5-7b-hf --device cuda   # a real checkpoint instead

``--model`` takes anything ``vlmshield.load_vlm`` loads (a hub id, a local checkpoint directory,
``demo``) in place of ``--size``'s random-weight architectures.

Random weights in the published architectures (``perf/_realsize.py``); every generation is forced to
exactly ``--max-new-tokens`` (``min_new_tokens`` = ``max_new_tokens``: no early EOS), greedy. The
variants of one batch size are interleaved (vanilla, coca, ecso judged safe, ecso flagged, cmrm
dataset, cmrm sample, then again), and each ratio is the median over rounds of the per-round ratio.
The naive CoCA loop (both full sequences recomputed at every step, no cache) runs at batch 1 for
``--naive-tokens`` (default 128 and 512 on a GPU, 32 on a CPU where it is very slow). Peak memory:
CUDA's peak allocated bytes, or the process's peak RSS on a CPU.

The last line printed is one JSON object with ``coca_vs_vanilla_b1``, ``coca_vs_vanilla_b8``,
``coca_vs_naive``, ``ecso_safe_vs_vanilla_b8``, ``ecso_flagged_vs_vanilla_b8``,
``cmrm_dataset_vs_vanilla_b8``, ``cmrm_sample_vs_vanilla_b8`` (and the same for every batch size
asked), the medians in seconds, peak memory, the device's name and every setting. CoCA's shared
prefill is measured against its plain layout (``coca_separate``, ``coca:share=false``, the same
tokens): ``coca_shared_vs_separate_b8`` for the whole generation, ``coca_prefill_vs_vanilla_b8`` and
``coca_prefill_separate_vs_vanilla_b8`` for the prefill alone (one new token).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import image_conversations, interleaved_times, median_ratio
from _realsize import SIZES, realsize_vlm

from vlmshield import GenerationConfig
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import calibrate_cmrm
from vlmshield.defenses.coca import Coca
from vlmshield.models import load_vlm
from vlmshield.testing.reference import naive_coca


def _peak_memory(device: str) -> dict[str, float]:
    if device.startswith("cuda"):
        return {"peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=SIZES, default="0.5b")
    ap.add_argument("--model", default=None, help="a checkpoint for load_vlm, instead of --size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 256 on CUDA, 64 on a CPU")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--naive-tokens", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    naive_tokens = args.naive_tokens if args.naive_tokens is not None else ([128, 512] if cuda else [32])

    t0 = time.perf_counter()
    if args.model:
        vlm = load_vlm(args.model, device=args.device, dtype=dtype)
    else:
        vlm = realsize_vlm(args.size, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - t0
    convs = image_conversations(max(args.batches), size=(336, 336))
    n = args.max_new_tokens or (256 if cuda else 64)
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n)
    coca = Coca(alpha=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        anchors = image_conversations(8, size=(336, 336))
        vectors = calibrate_cmrm(vlm, anchors, batch_size=4).save(Path(tmp) / "v.safetensors")
        built = {  # built once, outside the timed calls
            "coca": coca,
            "coca_separate": Coca(alpha=1.0, share=False),
            "ecso_safe": build_defense("ecso:force_flag=never"),
            "ecso_flagged": build_defense("ecso:force_flag=always"),
            "cmrm_dataset": build_defense(f"cmrm:vectors={vectors}"),
            "cmrm_sample": build_defense("cmrm:level=sample"),
        }
        defenses: dict[str, Callable[..., object]] = {
            name: (lambda b, d=d: d.generate(vlm, convs[:b], cfg)) for name, d in built.items()
        }
        out: dict[str, object] = {}
        medians: dict[str, float] = {}
        one = GenerationConfig(max_new_tokens=1, min_new_tokens=1)
        for b in args.batches:

            def timed(fn: Callable[[], object]) -> Callable[[], object]:
                def run() -> object:
                    result = fn()
                    _sync(args.device)
                    return result

                return run

            fns = {f"vanilla_b{b}": timed(lambda b=b: vlm.generate(convs[:b], cfg))}
            fns.update({f"{k}_b{b}": timed(lambda fn=fn, b=b: fn(b)) for k, fn in defenses.items()})
            times = interleaved_times(fns, repeats=args.repeats, warmup=1)
            for k in defenses:
                out[f"{k}_vs_vanilla_b{b}"] = round(median_ratio(times, f"{k}_b{b}", f"vanilla_b{b}"), 3)
            out[f"coca_shared_vs_separate_b{b}"] = round(
                median_ratio(times, f"coca_b{b}", f"coca_separate_b{b}"), 3
            )
            # the prefill alone (one new token): what sharing the prefix and the images saves there
            prefill = interleaved_times(
                {
                    "vanilla": timed(lambda b=b: vlm.generate(convs[:b], one)),
                    "shared": timed(lambda b=b: coca.generate(vlm, convs[:b], one)),
                    "separate": timed(lambda b=b: built["coca_separate"].generate(vlm, convs[:b], one)),
                },
                repeats=args.repeats,
                warmup=1,
            )
            out[f"coca_prefill_vs_vanilla_b{b}"] = round(median_ratio(prefill, "shared", "vanilla"), 3)
            out[f"coca_prefill_separate_vs_vanilla_b{b}"] = round(
                median_ratio(prefill, "separate", "vanilla"), 3
            )
            out[f"coca_shared_prefix_tokens_b{b}"] = coca.generate(vlm, convs[:1], one)[0].details[
                "shared_prefix_tokens"
            ]
            medians.update({k: round(statistics.median(v), 3) for k, v in times.items()})
            print(
                json.dumps({"batch": b, **{k: v for k, v in out.items() if k.endswith(f"_b{b}")}}),
                file=sys.stderr,
            )
        p, _ = coca.branches(convs[:1])
        for tokens in naive_tokens:
            c = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens)
            times = interleaved_times(
                {
                    f"coca_{tokens}": lambda c=c: coca.generate(vlm, convs[:1], c),
                    f"naive_{tokens}": lambda c=c, tokens=tokens: naive_coca(
                        vlm, convs[0], p[0], 1.0, tokens, config=c
                    ),
                },
                repeats=1,
                warmup=0,
            )
            out[f"coca_vs_naive_{tokens}"] = round(
                median_ratio(times, f"naive_{tokens}", f"coca_{tokens}"), 2
            )
            medians.update({k: round(statistics.median(v), 3) for k, v in times.items()})
        if naive_tokens:
            out["coca_vs_naive"] = out[f"coca_vs_naive_{naive_tokens[0]}"]
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(
        json.dumps(
            {
                **out,
                "median_seconds": medians,
                **_peak_memory(args.device),
                "settings": {
                    "size": None if args.model else args.size,
                    "model": args.model,
                    "device": args.device,
                    "device_name": device_name,
                    "dtype": dtype,
                    "max_new_tokens": n,
                    "batches": args.batches,
                    "naive_tokens": naive_tokens,
                    "repeats": args.repeats,
                    "threads": torch.get_num_threads(),
                    "parameters": sum(p.numel() for p in vlm.model.parameters()),
                    "prompt_tokens_b1": vlm.generate(
                        convs[:1], GenerationConfig(max_new_tokens=1)
                    ).num_prompt_tokens[0],
                    "load_seconds": round(load_s, 1),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
