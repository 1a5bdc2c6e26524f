"""Command-line usage errors (missing or unknown options, bad values, unknown commands) through the real
entry point: click's short usage message and exit code 2, never a traceback.

typer 0.29 vendors its own click (``typer._click``); the standalone ``click`` package may be installed
too. Both kinds of exceptions must be recognised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmshield.cli.main import main

CASES = [
    (["generate", "--model", "M"], "Missing option '--prompt'"),
    (["generate", "--prompt", "hi", "--no-such-option"], "No such option: --no-such-option"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "many"], "Invalid value for '--max-new-tokens'"),
    (["eval", "--batch-size", "0"], "--batch-size"),
    (["eval", "--limit", "abc"], "Invalid value for '--limit'"),
    (["eval", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["evaluate"], "No such command 'evaluate'"),
    (["list", "benchmarks", "extra"], "unexpected extra argument"),
    (["tiny", "build"], "Missing option"),
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_errors_exit_2_with_a_short_message(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err + out
    assert expected.lower() in err.lower(), err
    assert len(err.strip().splitlines()) <= 6, err  # click's usage line, a hint and the error


def test_usage_error_classes_of_both_clicks_are_recognised() -> None:
    from vlmshield.cli.main import _click_exception_types

    kinds = _click_exception_types()
    import typer
    import typer._click as vendored

    assert issubclass(vendored.exceptions.UsageError, kinds.click)
    assert typer.Exit in kinds.exit and typer.Abort in kinds.abort
    try:
        import click
    except ImportError:  # pragma: no cover - standalone click not installed
        return
    assert issubclass(click.exceptions.UsageError, kinds.click) and click.exceptions.Abort in kinds.abort


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    main(["generate", "--help"])  # returns normally (exit 0)
    assert "--prompt" in capsys.readouterr().out


def test_console_script_usage_error_is_not_a_traceback() -> None:
    script = Path(sys.executable).with_name("vlmshield")
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(script), "generate", "--model", "M"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Missing option '--prompt'" in proc.stderr
