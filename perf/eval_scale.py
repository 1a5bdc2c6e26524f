"""Data-parallel ``vlmshield eval`` throughput: samples/s at 1 and 2 ranks (``torchrun``, gloo).

Runs the same eval (tiny LLaVA-1.5 by default, ``mini`` + ``mini:text``: 120 samples with and without
images, ``none`` + ``coca``, 16 new tokens, batch 8) once per rank count, interleaved ``--repeats``
times, each rank on one thread, and prints one JSON object: per rank count the generation-phase rate
((defense, sample) answers per second while the ranks generate, from the manifest's
``generation_wall_s``, the slowest rank's), the whole command's wall time (start-up, model loading,
merge and report included) and the median speedups; plus the padding waste of the length-sorted
batches next to what dataset-order batches would have had.

    python perf/eval_scale.py                       # CPU: 1 vs 2 ranks
    python perf/eval_scale.py --ranks 1,2,4,8 --model llava-hf/llava-1.5-7b-hf --max-new-tokens 128  # GPUs

On a shared CPU the two ranks compete with whatever else runs: the speedup is at most the number of
idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BIN = Path(sys.executable).parent


def run_once(ranks: int, args: list[str], out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(ranks), str(BIN / "vlmshield"),
           *args, "--output-dir", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {ranks} ranks failed:\n{proc.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    inv = manifest["invocations"][-1]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "answers": inv["generated"],
        "generation_wall_s": inv["generation_wall_s"],
        "wall_s": wall,
        "padding": summary.get("padding"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the tiny LLaVA-1.5)")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--benchmark", default="mini,mini:text")
    parser.add_argument("--defense", action="append", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    if opts.model is None:
        from vlmshield.testing import tiny_checkpoint

        opts.model = str(tiny_checkpoint("llava"))
    defenses = opts.defense or ["none", "coca"]
    args = ["eval", "--model", opts.model, "--benchmark", opts.benchmark, "--batch-size", str(opts.batch_size),
            "--max-new-tokens", str(opts.max_new_tokens), "--no-progress", "--json"]  # fmt: skip
    for d in defenses:
        args += ["--defense", d]
    counts = [int(x) for x in opts.ranks.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(opts.repeats):
            for n in counts:  # interleaved: 1, 2, 1, 2, ...
                runs[n].append(run_once(n, args, Path(tmp) / f"ranks{n}"))
    out: dict[str, Any] = {
        "model": "tiny-llava-1.5" if "tiny" in opts.model else opts.model,
        "benchmark": opts.benchmark,
        "defenses": defenses,
        "answers": runs[counts[0]][0]["answers"],
        "batch_size": opts.batch_size,
        "max_new_tokens": opts.max_new_tokens,
        "cpu_cores": os.cpu_count(),
        "threads_per_rank": 1,
        "repeats": opts.repeats,
    }
    base = counts[0]
    for n in counts:
        gen = [r["answers"] / r["generation_wall_s"] for r in runs[n]]
        whole = [r["answers"] / r["wall_s"] for r in runs[n]]
        out[f"ranks_{n}"] = {
            "generation_answers_per_s": round(statistics.median(gen), 2),
            "command_answers_per_s": round(statistics.median(whole), 2),
            "command_wall_s": round(statistics.median(r["wall_s"] for r in runs[n]), 1),
        }
    for n in counts[1:]:
        out[f"speedup_generation_{n}_vs_{base}"] = round(
            out[f"ranks_{n}"]["generation_answers_per_s"] / out[f"ranks_{base}"]["generation_answers_per_s"],
            2,
        )
        out[f"speedup_command_{n}_vs_{base}"] = round(
            out[f"ranks_{n}"]["command_answers_per_s"] / out[f"ranks_{base}"]["command_answers_per_s"], 2
        )
    pad = runs[base][0]["padding"]
    if pad:
        out["prompt_padding_length_order"] = round(pad["prompt"]["waste"], 4)
        out["prompt_padding_dataset_order"] = round(pad["prompt_in_dataset_order"], 4)
        out["decode_padding"] = round(pad["decode"]["waste"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
