"""Shared helpers for the speed scripts: tiny inputs and interleaved, median-of-N timing.

Timings on shared machines are noisy, so every script reports ratios measured within one run, with
the compared variants interleaved (A, B, A, B, ...) and the median of each taken.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from PIL import Image

from vlmshield import Conversation
from vlmshield.benchmarks.synthetic_images import render_scene
from vlmshield.models import VLM, load_vlm
from vlmshield.testing import tiny_checkpoint

QUERIES = [
    "What is in this picture?",
    "Describe the image in detail.",
    "How many objects can you see here?",
    "What colours are the main objects?",
    "Is this scene indoors or outdoors?",
    "Write a short story inspired by this image.",
    "What could this image be used for?",
    "Name three things shown here.",
]


def tiny_llava() -> VLM:
    return load_vlm(str(tiny_checkpoint("llava")), device="cpu")


def image_conversations(n: int, size: tuple[int, int] = (64, 64)) -> list[Conversation]:
    """``n`` conversations, each a different query with a different synthetic image."""
    out = []
    for i in range(n):
        img: Image.Image = render_scene(i, size=size)[0]
        out.append(Conversation.single(QUERIES[i % len(QUERIES)], images=[img]))
    return out


def interleaved_times(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of each function, run in turn (one round = each once) ``repeats`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each function over interleaved rounds."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats, warmup).items()}


def median_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num``'s time over ``den``'s time in the same round (robust to drift)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))
