"""``vlmshield eval``'s scale options on the command line: bad values are one ``error:`` line and exit 2
before any model loads or any endpoint is contacted."""

from __future__ import annotations

from typing import Any

import pytest

from vlmshield.cli.main import main


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            "the model was loaded (or the endpoint called) before the arguments were checked"
        )

    monkeypatch.setattr("vlmshield.eval.runner._load_model", boom)
    for name in ("VLMSHIELD_OPENAI_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


URL = "http://127.0.0.1:9/v1"  # nothing listens: a check that connects would fail differently


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-memory", "lots"], "error: --max-memory: bad size 'lots'"),
        (["--max-memory", "tpu=1GiB"], "unknown device 'tpu'"),
        (["--device-map", "everywhere"], "--device-map 'everywhere': use one of auto"),
        (
            ["--model", "openai:tiny", "--base-url", URL, "--defense", "coca"],
            "defense 'coca' needs the model's",
        ),
        (
            ["--model", "openai:tiny", "--base-url", URL, "--defense", "cmrm:level=sample"],
            "defense 'cmrm' needs",
        ),
        (["--model", "openai:tiny", "--defense", "ecso"], "needs an endpoint: pass --base-url URL"),
        (["--model", f"openai:{URL}#tiny", "--base-url", "http://127.0.0.1:10/v1"], "drop --base-url"),
        (["--base-url", URL], "--base-url is for a remote model"),
    ],
)
def test_bad_scale_arguments_are_one_line(
    extra: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    argv = ["eval", "--benchmark", "mini:text", "--defense", "none", "-o", str(tmp_path / "run"), *extra]
    assert expected in _fails(argv, capsys)


def test_an_unknown_order_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--benchmark", "mini:text", "--order", "random", "-o", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "random" in capsys.readouterr().err
