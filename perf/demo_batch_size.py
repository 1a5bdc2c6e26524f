"""Why the demo model's default batch is 32: the same 32 `mini` requests (with their images) answered
as two batches of 16 and as one batch of 32, on the demo VLM, 32 new tokens, rounds interleaved.

Prints ``{"s_per_sample_16": ..., "s_per_sample_32": ..., "ratio_32_vs_16": ..., "same_answers": ...}``.
Target on a 2-core CPU: ratio at most 0.9 with ``same_answers`` true (a decoding step of this 135M
model reads all its weights once, whatever the number of rows, so more rows share that cost).

    python perf/demo_batch_size.py
"""

from __future__ import annotations

import json

from _common import interleaved_times, median_ratio

from vlmshield import GenerationConfig
from vlmshield.benchmarks import load_benchmark
from vlmshield.models import load_vlm


def main() -> None:
    vlm = load_vlm("demo")
    convs = [s.to_conversation() for s in load_benchmark("mini").samples[:32]]
    cfg = GenerationConfig(max_new_tokens=32)
    answers: dict[int, list[str]] = {}

    def run(batch: int) -> None:
        texts: list[str] = []
        for i in range(0, len(convs), batch):
            texts += vlm.generate(convs[i : i + batch], cfg).texts
        answers[batch] = texts

    t = interleaved_times({"16": lambda: run(16), "32": lambda: run(32)}, repeats=3)
    print(
        json.dumps(
            {
                "s_per_sample_16": min(t["16"]) / len(convs),
                "s_per_sample_32": min(t["32"]) / len(convs),
                "ratio_32_vs_16": median_ratio(t, "32", "16"),
                "same_answers": answers[16] == answers[32],
            }
        )
    )


if __name__ == "__main__":
    main()
