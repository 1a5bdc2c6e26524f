"""Calibrate the demo VLM's dataset-level CMRM vectors and ship them with the package.

Anchors: 64 benign (synthetic image, generic question) pairs, disjoint from the ``mini`` benchmark
(its images use scene seeds 1_000_000+, these 3_000_000+, and none of its questions), built here:

    .venv/bin/python scripts/demo/calibrate_cmrm.py [--model DIR] [--out FILE]

writes ``src/vlmshield/demo/artifacts/cmrm_vectors.safetensors`` through ``vlmshield calibrate cmrm``
with CMRM's defaults written out: ``--mode sequential`` (each layer's vector measured with the earlier
layers already steered, so nothing compounds), all positions, all layers, blank-image corruption, mean.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vlmshield.benchmarks.synthetic_images import render_scene

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".cache" / "demo-build" / "cmrm-anchors"
OUT = ROOT / "src" / "vlmshield" / "demo" / "artifacts" / "cmrm_vectors.safetensors"
QUESTIONS = [
    "What is in this picture?",
    "Describe this image.",
    "What colours do you see?",
    "What is the main object here?",
    "Tell me about this scene.",
    "What could this image be used for?",
    "Is there anything unusual in this picture?",
    "Summarise what the image shows.",
]
N = 64
SEED0 = 3_000_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", help="'demo' or a checkpoint directory")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(N):
        image, _ = render_scene(SEED0 + i)
        path = WORK / f"anchor-{i:03d}.png"
        image.save(path)
        lines.append(json.dumps({"image": path.name, "query": QUESTIONS[i % len(QUESTIONS)]}))
    anchors = WORK / "anchors.jsonl"
    anchors.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "vlmshield.cli.main", "calibrate", "cmrm", "--model", args.model]
    cmd += ["--anchor", str(anchors), "--out", str(args.out), "--device", "cpu"]
    cmd += ["--mode", "sequential", "--positions", "all", "--layers", "all"]
    cmd += ["--corruption", "blank", "--aggregator", "mean"]
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
