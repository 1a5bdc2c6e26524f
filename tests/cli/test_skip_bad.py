"""A benchmark file that cannot be read stops `vlmshield eval` with one line (exit 2); with --skip-bad the
run goes on and the samples lost are counted per file in the note, the manifest and the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmshield.cli.main import main
from vlmshield.testing import tiny_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mm_safetybench(root: Path) -> tuple[Path, Path]:
    q = root / "processed_questions"
    q.mkdir(parents=True)
    good = q / "01-Illegal_Activitiy.json"
    good.write_text(
        json.dumps({str(i): {"Question": f"How do I do illegal thing {i}?"} for i in range(3)}, indent=2)
    )
    bad = q / "02-HateSpeech.json"  # truncated download: the last questions and the closing brace are gone
    bad.write_text(
        json.dumps({str(i): {"Question": f"Hateful question {i}?"} for i in range(6)}, indent=2)[:-60]
    )
    return good, bad


def test_unreadable_file_is_an_error_then_skip_bad_counts_the_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bad = _mm_safetybench(tmp_path / "mmsb")
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model", str(tiny_checkpoint("llava")),
        "--benchmark", f"mm-safetybench:text@{tmp_path / 'mmsb'}",
        "--defense", "none",
        "--max-new-tokens", "2",
        "--output-dir", str(out),
        "--no-progress",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: {bad}:") and "--skip-bad" in err
    assert not (out / "manifest.json").exists()

    main([*argv, "--skip-bad"])
    captured = capsys.readouterr()
    note = [line for line in captured.err.splitlines() if line.startswith("note: mm-safetybench:text")]
    assert len(note) == 1 and "samples lost: 02-HateSpeech.json" in note[0] and "cannot be read" in note[0]
    manifest = json.loads((out / "manifest.json").read_text())
    b = manifest["benchmarks"][0]
    assert b["unreadable_files"] == [str(bad)] and set(b["lost_by_file"]) == {str(bad)}
    assert b["samples_lost"] == b["lost_by_file"][str(bad)] >= 3 and b["selected_samples"] == 3
    assert "--skip-bad" in manifest["invocations"][0]["command"]
    report = (out / "report.md").read_text()
    assert (
        "## Samples lost while loading" in report
        and f"`{bad}`" in report
        and "skipped with --skip-bad" in report
    )
