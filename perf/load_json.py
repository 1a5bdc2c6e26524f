"""Load time of 25,000-entry JSON benchmark files (ScienceQA's ``problems.json`` has 21k entries).

Writes, in a temporary folder, a ScienceQA-style ``problems.json`` (an indented object of 25k problems,
text-only so no image is looked up) and a one-line 25k-entry list (the shape of VLGuard's
``test.json``), then times ``json_entries`` over each and a full ``scienceqa`` load (median of 3).
Prints ``{"entries": 25000, "scienceqa_load_s": ..., "indented_entries_s": ..., "one_line_entries_s":
..., "target_s": 2.0, "ok": true}``. Target: each under 2 s (counting lines from the start of the file
for every entry, as before, took minutes).

    python perf/load_json.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("VLMSHIELD_OFFLINE", "1")

from vlmshield.benchmarks import get_benchmark
from vlmshield.benchmarks.readers import json_entries, read_text

N = 25_000
TARGET_S = 2.0


def problem(i: int) -> dict[str, object]:
    return {
        "question": f"Which of these states is farthest north? (question {i})",
        "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma."],
        "answer": i % 4,
        "hint": "Lecture: a map shows where places are. " * (1 + i % 3),
        "image": None,
        "task": "closed choice",
        "grade": f"grade{1 + i % 12}",
        "subject": "social science",
        "topic": "geography",
        "category": "Geography",
        "skill": "Read a map: cardinal directions",
        "lecture": "Maps have four cardinal directions, or main directions. " * 4,
        "solution": "To find the answer, look at the compass rose. " * 3,
        "split": "test",
    }


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        problems = root / "problems.json"
        problems.write_text(json.dumps({str(i): problem(i) for i in range(N)}, indent=4), encoding="utf-8")
        one_line = root / "test.json"
        one_line.write_text(json.dumps([{"id": f"e{i}", **problem(i)} for i in range(N)]), encoding="utf-8")

        def entries(path: Path) -> int:
            return sum(1 for _ in json_entries(read_text(path), path))

        assert entries(problems) == entries(one_line) == N
        load = get_benchmark("scienceqa")
        assert len(load.load(root, variant="test")) == N
        results = {
            "scienceqa_load_s": median_time(lambda: load.load(root, variant="test")),
            "indented_entries_s": median_time(lambda: entries(problems)),
            "one_line_entries_s": median_time(lambda: entries(one_line)),
        }
        sizes = {
            "problems_json_mb": problems.stat().st_size / 1e6,
            "one_line_mb": one_line.stat().st_size / 1e6,
        }
    ok = all(v < TARGET_S for v in results.values())
    out = {
        "entries": N,
        **{k: round(v, 3) for k, v in results.items()},
        **{k: round(v, 1) for k, v in sizes.items()},
        "target_s": TARGET_S,
        "ok": ok,
    }
    print(json.dumps(out))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
