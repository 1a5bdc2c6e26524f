"""ECSO's cost on the tiny LLaVA-1.5 checkpoint, 64 new tokens, batch 8.

Prints ``{"ratio_safe": ..., "ratio_flagged": ..., ...}``: ECSO wall time over vanilla greedy generation
for inputs the check judges safe (steps 1-2: answer + capped check) and for inputs it flags (all four
steps: answer, check, caption, final answer without the image). The decision is forced
(``force_flag=never`` / ``always``) so that both paths are timed on the same inputs; the check still
runs in both. Top-level ratios are for the ``default`` preset; ``by_preset`` has both presets.
Target on a CPU: ``ratio_safe`` at most 1.3. A flagged input costs about three generations more
(caption and final answer are full-length), so ``ratio_flagged`` is expected near 3x.

Each round times vanilla, then every ECSO variant (order rotated between rounds); a ratio is the median
over rounds of variant time / vanilla time in the same round.

    python perf/ecso_overhead.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import torch
from _common import image_conversations, tiny_llava

from vlmshield import GenerationConfig
from vlmshield.defenses.ecso import Ecso

REPEATS = 15


def paired_ratios(
    baseline: Callable[[], object], variants: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median over rounds of (variant time / baseline time in the same round), and median times.

    Each round runs the baseline, then every variant, in an order rotated from round to round, so a
    slow patch of the shared machine hits the ratio's numerator and denominator alike.
    """
    baseline()
    for fn in variants.values():
        fn()
    names = list(variants)
    ratios: dict[str, list[float]] = {k: [] for k in names}
    times: dict[str, list[float]] = {k: [] for k in ["vanilla", *names]}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        t0 = time.perf_counter()
        baseline()
        base = time.perf_counter() - t0
        times["vanilla"].append(base)
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            ratios[name].append(dt / base)
    return (
        {k: statistics.median(v) for k, v in ratios.items()},
        {k: statistics.median(v) for k, v in times.items()},
    )


def main() -> None:
    torch.set_num_threads(1)  # tiny matmuls on a shared CPU are faster and steadier on one thread
    vlm = tiny_llava()
    convs = image_conversations(8)
    cfg = GenerationConfig(max_new_tokens=64)
    variants: dict[str, Callable[[], object]] = {}
    defenses = {}
    for preset in ("default", "paper"):
        for flag in ("never", "always"):
            d = Ecso(preset=preset, force_flag=flag)
            defenses[(preset, flag)] = d
            variants[f"{preset}_{flag}"] = lambda d=d: d.generate(vlm, convs, cfg)
    ratio, t = paired_ratios(lambda: vlm.generate(convs, cfg), variants, REPEATS)

    tokens = {}
    for (preset, flag), d in defenses.items():
        res = d.generate(vlm, convs, cfg)
        tokens[f"{preset}_{flag}"] = {
            step: sum(r.details["cost"].get(step, {}).get("new_tokens", 0) for r in res) / len(res)
            for step in ("answer", "check", "caption", "final")
        }
    by_preset = {
        preset: {
            "ratio_safe": round(ratio[f"{preset}_never"], 3),
            "ratio_flagged": round(ratio[f"{preset}_always"], 3),
        }
        for preset in ("default", "paper")
    }
    print(
        json.dumps(
            {
                **by_preset["default"],
                "by_preset": by_preset,
                "median_seconds": {k: round(v, 4) for k, v in t.items()},
                "mean_new_tokens_per_step": tokens,
                "setup": {
                    "model": "tiny llava",
                    "batch": 8,
                    "max_new_tokens": 64,
                    "repeats": REPEATS,
                    "threads": 1,
                },
                "targets": {"ratio_safe_max": 1.3},
            }
        )
    )


if __name__ == "__main__":
    main()
