"""CoCA's cost on the tiny LLaVA-1.5 checkpoint.

Prints ``{"ratio_vs_vanilla_b1": ..., "ratio_vs_vanilla_b8": ..., "speedup_vs_naive_128": ...}``:
CoCA wall time over vanilla greedy for 64 new tokens at batch 1 and batch 8, and how much faster
CoCA (batched, KV-cached two-branch decoding) is than the naive loop that recomputes both full
sequences at every step, for 128 new tokens at batch 1. Targets on a CPU: at most 1.3x vanilla, at
least 4x faster than the naive loop.

    python perf/coca_overhead.py
"""

from __future__ import annotations

import json
import statistics

from _common import image_conversations, interleaved_times, median_ratio, tiny_llava

from vlmshield import GenerationConfig
from vlmshield.defenses.coca import Coca
from vlmshield.testing.reference import naive_coca


def main() -> None:
    vlm = tiny_llava()
    convs = image_conversations(8)
    coca = Coca(alpha=1.0)
    cfg64 = GenerationConfig(max_new_tokens=64)
    cfg128 = GenerationConfig(max_new_tokens=128)
    p, q = coca.branches(convs[:1])

    t = interleaved_times(
        {
            "vanilla_b1": lambda: vlm.generate(convs[:1], cfg64),
            "coca_b1": lambda: coca.generate(vlm, convs[:1], cfg64),
            # the same two-row (P, Q) left-padded batch decoded plainly: what batching the branches
            # costs by itself, before any calibration
            "plain_pq_b1": lambda: vlm.generate([*p, *q], cfg64),
            "vanilla_b8": lambda: vlm.generate(convs, cfg64),
            "coca_b8": lambda: coca.generate(vlm, convs, cfg64),
        },
        repeats=15,
    )
    naive = interleaved_times(
        {
            "coca_128": lambda: coca.generate(vlm, convs[:1], cfg128),
            "naive_128": lambda: naive_coca(vlm, convs[0], p[0], 1.0, 128),
        },
        repeats=3,
    )
    print(
        json.dumps(
            {
                "ratio_vs_vanilla_b1": round(median_ratio(t, "coca_b1", "vanilla_b1"), 3),
                "ratio_vs_vanilla_b8": round(median_ratio(t, "coca_b8", "vanilla_b8"), 3),
                "ratio_plain_two_branch_batch_vs_vanilla_b1": round(
                    median_ratio(t, "plain_pq_b1", "vanilla_b1"), 3
                ),
                "speedup_vs_naive_128": round(median_ratio(naive, "naive_128", "coca_128"), 2),
                "median_seconds": {k: round(statistics.median(v), 4) for k, v in {**t, **naive}.items()},
                "targets": {"ratio_vs_vanilla_max": 1.3, "speedup_vs_naive_min": 4.0},
            }
        )
    )


if __name__ == "__main__":
    main()
