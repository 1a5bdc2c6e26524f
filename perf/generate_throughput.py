"""Samples/s of plain batched generation at batch 1 and batch 8 (tiny LLaVA-1.5, 32 new tokens).

Prints ``{"batch1_samples_per_s": ..., "batch8_samples_per_s": ..., "speedup": ...}``.
Target: batch 8 reaches at least 3x the samples/s of batch 1 on a CPU.

    python perf/generate_throughput.py
"""

from __future__ import annotations

import json

from _common import image_conversations, interleaved_medians, tiny_llava

from vlmshield import GenerationConfig


def main() -> None:
    vlm = tiny_llava()
    convs = image_conversations(8)
    cfg = GenerationConfig(max_new_tokens=32)

    def batch1() -> None:
        for c in convs:
            vlm.generate([c], cfg)

    def batch8() -> None:
        vlm.generate(convs, cfg)

    t = interleaved_medians({"b1": batch1, "b8": batch8}, repeats=5)
    b1, b8 = len(convs) / t["b1"], len(convs) / t["b8"]
    print(
        json.dumps(
            {
                "batch1_samples_per_s": round(b1, 2),
                "batch8_samples_per_s": round(b8, 2),
                "speedup": round(b8 / b1, 2),
                "target_speedup": 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
