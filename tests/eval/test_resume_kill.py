"""The resume guarantee: a runner killed with SIGKILL mid-run, then re-run with the same command, ends
with exactly the rows of an uninterrupted run, none missing and none twice."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vlmshield.cli.main import main
from vlmshield.eval.runner import PAUSE_ENV, PAUSE_SECONDS_ENV
from vlmshield.eval.store import RunStore
from vlmshield.testing import tiny_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def _wait_for(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """Read the process's stderr until a line contains ``marker``; return what was read."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} from the runner; stderr:\n{''.join(seen)[-3000:]}")


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path: Path, jsonl_benchmark: Path) -> None:
    ckpt = str(tiny_checkpoint("llava"))
    args = [
        "eval",
        "--model", ckpt,
        "--benchmark", f"jsonl@{jsonl_benchmark}",
        "--defense", "coca",
        "--defense", "cmrm:level=sample",
        "--batch-size", "2",
        "--max-new-tokens", "4",
        "--no-progress",
    ]  # fmt: skip
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # as the in-process runs below (tests/eval/conftest.py)
        PAUSE_ENV: "4",  # 6 samples / batch 2 = 3 batches x 3 defenses: stop inside batch 1
        PAUSE_SECONDS_ENV: "300",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmshield.cli.main", *args, "--output-dir", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(proc, "vlmshield-test: paused after 4 batches", timeout_s=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with RunStore(killed / "results.sqlite") as store:
        at_kill = store.counts()
        pending = store.pending_judgements("keyword")
    # batches are chunks of the length-sorted samples (the two-image sample, which fails, comes last):
    # batch 0 for none, coca, cmrm and batch 1 for none: 4 units of 2 rows; batch 1's answers were
    # written but not yet judged when the process died
    assert at_kill["generations"] == 8 and at_kill["generation_errors"] == 0
    assert at_kill["verdicts"] == 6 and len(pending) == 2

    main([*args, "--output-dir", str(killed)])  # the same command again: resumes
    main([*args, "--output-dir", str(reference)])  # an uninterrupted run

    with RunStore(killed / "results.sqlite") as a, RunStore(reference / "results.sqlite") as b:
        gens_a, verdicts_a = a.result_rows()
        gens_b, verdicts_b = b.result_rows()
        counts = a.counts()
        resumed_order = [(g["defense"], g["sample_id"]) for g in a.generations()]
    assert gens_a == gens_b
    assert verdicts_a == verdicts_b
    # every (defense, sample) once, every answered one judged once; errors kept, not duplicated
    assert counts["generations"] == 18 == len(set(resumed_order))
    assert counts["generation_errors"] == 3
    assert counts["verdicts"] == 15
    assert len({(v[0], v[1], v[2]) for v in verdicts_a}) == 15
