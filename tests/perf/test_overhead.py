"""``perf/overhead.py`` and its real-size architectures: the script runs end to end and reports every
key the performance docs promise; the random-weight architectures have the published sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlmshield.testing import tiny_checkpoint

PERF = Path(__file__).resolve().parents[2] / "perf"
sys.path.insert(0, str(PERF))

from _realsize import _build_llava, _build_qwen7b  # noqa: E402

REQUIRED = (
    "coca_vs_vanilla_b1",
    "coca_vs_vanilla_b2",
    "coca_vs_naive",
    "ecso_safe_vs_vanilla_b2",
    "ecso_flagged_vs_vanilla_b2",
    "cmrm_dataset_vs_vanilla_b2",
    "cmrm_sample_vs_vanilla_b2",
    "coca_shared_vs_separate_b2",
    "coca_prefill_vs_vanilla_b2",
    "coca_prefill_separate_vs_vanilla_b2",
)


def test_overhead_script_reports_every_ratio_on_a_tiny_checkpoint() -> None:
    path = tiny_checkpoint("llava")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PERF), os.environ.get("PYTHONPATH", "")])}
    args = ["--model", str(path), "--max-new-tokens", "3", "--batches", "1", "2", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, str(PERF / "overhead.py"), *args, "--naive-tokens", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in REQUIRED:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["coca_shared_prefix_tokens_b1"] > 0  # llava shares the image and the header
    assert result["settings"]["model"] == str(path) and result["settings"]["max_new_tokens"] == 3
    assert result["peak_rss_gib"] > 0 and result["median_seconds"]["vanilla_b2"] > 0


# Parameter counts from the checkpoints' model cards: llava-hf/llava-1.5-7b-hf "7.06B",
# Qwen/Qwen2.5-VL-7B-Instruct "8.29B"; the 0.5b pairing is ours (perf/_realsize.py: about 0.58B).
@pytest.mark.parametrize(
    ("build", "published"),
    [
        (lambda: _build_llava("7b"), 7.06e9),
        (_build_qwen7b, 8.29e9),
        (lambda: _build_llava("0.5b"), 0.58e9),
    ],
    ids=["llava-1.5-7b", "qwen2.5-vl-7b", "0.5b"],
)
def test_real_size_architectures_have_the_published_parameter_count(build, published) -> None:  # type: ignore[no-untyped-def]
    config, _ = build()
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) / published < 0.01, count
