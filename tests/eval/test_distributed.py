"""Data-parallel ``vlmshield eval`` under ``torchrun`` and ``accelerate launch`` (2 ranks, CPU, gloo) on
a tiny checkpoint: the same rows, summary, report and manifest identity as one process; a rank killed
with SIGKILL fails the run loudly, and a re-run with 2 ranks or with 1 ends with every sample once.

Each launch starts 2 ranks plus the launcher (about 15-40 s on a busy 2-core machine), so the module
keeps to 5 launches in all, each bounded by a timeout."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmshield.cli.main import main
from vlmshield.eval.runner import PAUSE_ENV, PAUSE_RANK_ENV, PAUSE_SECONDS_ENV
from vlmshield.eval.steps import FAIL_LOAD_RANK_ENV
from vlmshield.eval.store import RunStore
from vlmshield.testing import tiny_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(480),  # fixture launches included
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]

BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT_S = 240


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLMSHIELD_TEST_", "RANK", "WORLD_SIZE"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(n: int) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(n), str(BIN / "vlmshield")]


def _accelerate(n: int) -> list[str]:
    # accelerate's multi-process launcher (named --multi_gpu) runs torch.distributed.run: on CPUs too
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            str(BIN / "vlmshield")]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, make_jsonl_benchmark: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dist")
    bench = make_jsonl_benchmark(tmp / "bench")
    # the default defenses (none, coca, ecso, cmrm at sample level); 6 samples in 3 batches of 2:
    # rank 0 gets batches 0 and 2, rank 1 batch 1; relative --output-dir so that every run records
    # the same command line
    args = ["eval", "--model", str(tiny_checkpoint("llava")), "--benchmark", f"jsonl@{bench}",
            "--batch-size", "2", "--max-new-tokens", "4", "--no-progress", "--output-dir", "run"]  # fmt: skip
    reference = tmp / "single"
    reference.mkdir()
    here = Path.cwd()
    os.chdir(reference)
    try:
        main(list(args))
    finally:
        os.chdir(here)
    return {"tmp": tmp, "args": args, "reference": reference / "run"}


def _launch(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )


def _no_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _no_timing(v) for k, v in obj.items() if "wall_time" not in k and k != "run_dir"}
    if isinstance(obj, list):
        return [_no_timing(v) for v in obj]
    return obj


def _report_without_timing(path: Path) -> str:
    """report.md with the table's two wall-time columns (s/sample, x none) removed."""
    out = []
    for line in path.read_text().splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) == 11:
            del cells[8:10]
        out.append(" | ".join(cells))
    return "\n".join(out)


def assert_same_run(got: Path, want: Path, *, same_row_order: bool = True) -> None:
    """``got`` holds exactly ``want``'s rows, summary, report and manifest identity (timing aside)."""
    with RunStore(got / "results.sqlite") as a, RunStore(want / "results.sqlite") as b:
        assert a.result_rows() == b.result_rows()
        assert a.counts() == b.counts()
        order_a = [(g["defense"], g["sample_id"]) for g in a.generations()]
        order_b = [(g["defense"], g["sample_id"]) for g in b.generations()]
    assert len(order_a) == len(set(order_a))  # every (defense, sample) once
    if same_row_order:
        assert order_a == order_b  # merged in the order one process writes
    s_got, s_want = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    assert _no_timing(s_got) == _no_timing(s_want)
    assert _report_without_timing(got / "report.md") == _report_without_timing(want / "report.md")
    m_got, m_want = (json.loads((d / "manifest.json").read_text()) for d in (got, want))
    for key in ("identity", "defenses", "judges", "benchmarks", "samples", "generation", "counts", "status"):
        assert m_got[key] == m_want[key], key
    assert not list((got / "parts").glob("*")) if (got / "parts").is_dir() else True


def test_torchrun_two_ranks_equal_one_process(setup: dict[str, Any]) -> None:
    cwd = setup["tmp"] / "torchrun"
    proc = _launch(_torchrun(2) + setup["args"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(cwd / "run", setup["reference"])
    inv = json.loads((cwd / "run" / "manifest.json").read_text())["invocations"][-1]
    assert inv["ranks"] == 2
    units = {s["rank"]: s["units"] for s in inv["ranks_stats"]}
    assert units == {0: 8, 1: 4}  # both ranks worked: batches 0 and 2 on rank 0, batch 1 on rank 1
    assert proc.stdout.count("results:") == 1  # one summary for the run, from rank 0


def test_accelerate_launch_two_processes_equal_one_process(setup: dict[str, Any]) -> None:
    cwd = setup["tmp"] / "accelerate"
    proc = _launch(_accelerate(2) + setup["args"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(cwd / "run", setup["reference"])
    assert json.loads((cwd / "run" / "manifest.json").read_text())["invocations"][-1]["ranks"] == 2


@pytest.fixture(scope="module")
def killed(setup: dict[str, Any]) -> Iterator[Path]:
    """A 2-rank run whose rank 1 is SIGKILLed after writing 2 units (before judging the second)."""
    cwd = setup["tmp"] / "killed"
    cwd.mkdir()
    env = _env(**{PAUSE_ENV: "2", PAUSE_RANK_ENV: "1", PAUSE_SECONDS_ENV: "300"})
    proc = subprocess.Popen(_torchrun(2) + setup["args"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    pid = None
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while pid is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            found = re.search(r"paused after 2 batches \(rank 1, pid (\d+)\)", line)
            if found:
                pid = int(found.group(1))
        assert pid is not None, "".join(seen)[-3000:]
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    err = "".join(seen)
    assert proc.returncode != 0  # the launcher fails the run loudly, naming the killed rank
    assert "SIGKILL" in err and "rank      : 1" in err, err[-3000:]
    yield cwd


def test_a_killed_rank_leaves_whole_units_and_an_unfinished_run(killed: Path) -> None:
    run = killed / "run"
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    with RunStore(run / "parts" / "rank-00001.sqlite") as part:
        gens, verdicts = part.generations(), part.verdicts()
    # rank 1 wrote batch 1 for none and coca (2 rows each, whole units) and judged only the first
    assert sorted((g["defense"], g["batch"]) for g in gens) == [("coca", 1)] * 2 + [("none", 1)] * 2
    assert {v["defense"] for v in verdicts} == {"none"} and len(verdicts) == 2


@pytest.mark.parametrize("ranks", [2, 1])
def test_rerun_after_a_killed_rank_finishes_with_every_sample_once(
    setup: dict[str, Any], killed: Path, ranks: int
) -> None:
    cwd = setup["tmp"] / f"rerun-{ranks}"
    shutil.copytree(killed, cwd)
    if ranks == 2:
        proc = _launch(_torchrun(2) + setup["args"], cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "resuming:" in proc.stderr and "from 2 rank files" in proc.stderr
    else:
        here = Path.cwd()
        os.chdir(cwd)
        try:
            main(list(setup["args"]))
        finally:
            os.chdir(here)
    # resumed rows come first in the file (as in any resumed run); their content is the same
    assert_same_run(cwd / "run", setup["reference"], same_row_order=False)


def test_a_rank_that_cannot_load_the_model_stops_every_rank_at_once(setup: dict[str, Any]) -> None:
    # only rank 1 fails loading; rank 0 must name it and stop (before the fix, rank 0 waited in the
    # next broadcast until the gloo timeout: here 120 s, past the launch's 90 s bound)
    cwd = setup["tmp"] / "load-fails"
    cwd.mkdir()
    start = time.monotonic()
    proc = subprocess.run(
        _torchrun(2) + setup["args"] + ["--dist-timeout", "120"],
        cwd=cwd,
        env=_env(**{FAIL_LOAD_RANK_ENV: "1"}),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode != 0
    assert time.monotonic() - start < 90
    wanted = "error: rank 1 of 2 could not load the model: vlmshield-test: loading failed on rank 1"
    assert wanted in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("error: ") == 1  # rank 0 speaks for the run; rank 1 stops quietly
    # one line, no traceback of ours (torchrun prints its own ChildFailedError frames)
    assert not re.search(r'File "[^"]*vlmshield/', proc.stderr), proc.stderr[-3000:]
