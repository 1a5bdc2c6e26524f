"""CMRM's cost on the tiny LLaVA-1.5 checkpoint: wall time over vanilla, 64 new tokens, batch 8.

Prints ``{"ratio_dataset": ..., "ratio_sample": ...}``. Targets on a CPU: dataset level at most
1.05x, sample level at most 1.4x.

    python perf/cmrm_overhead.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from _common import image_conversations, interleaved_times, median_ratio, tiny_llava

from vlmshield import GenerationConfig
from vlmshield.defenses import build_defense
from vlmshield.defenses.cmrm import calibrate_cmrm


def main() -> None:
    vlm = tiny_llava()
    convs = image_conversations(8)
    cfg = GenerationConfig(max_new_tokens=64)
    with tempfile.TemporaryDirectory() as tmp:
        path = calibrate_cmrm(vlm, image_conversations(16)[8:]).save(Path(tmp) / "v.safetensors")
        dataset = build_defense(f"cmrm:vectors={path},alpha=1.0")
        sample = build_defense("cmrm:level=sample,alpha=0.5")
        t = interleaved_times(
            {
                "vanilla": lambda: vlm.generate(convs, cfg),
                "dataset": lambda: dataset.generate(vlm, convs, cfg),
                "sample": lambda: sample.generate(vlm, convs, cfg),
            },
            repeats=15,
        )
    print(
        json.dumps(
            {
                "ratio_dataset": round(median_ratio(t, "dataset", "vanilla"), 3),
                "ratio_sample": round(median_ratio(t, "sample", "vanilla"), 3),
                "median_seconds": {k: round(statistics.median(v), 4) for k, v in t.items()},
                "targets": {"ratio_dataset_max": 1.05, "ratio_sample_max": 1.4},
            }
        )
    )


if __name__ == "__main__":
    main()
