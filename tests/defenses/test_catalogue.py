"""``vlmshield list defenses`` shows every registered defense with its paper, type, cost and needs."""

from __future__ import annotations

import pytest

from vlmshield.cli.main import main
from vlmshield.defenses import DEFENSE_INFO, DEFENSES


def test_list_defenses_shows_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["list", "defenses"])
    except SystemExit as e:  # typer may or may not exit explicitly on success
        assert e.code in (0, None)
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [ln.split()[0] for ln in lines] == DEFENSES.names()
    for name, line in zip(DEFENSES.names(), lines, strict=True):
        info = DEFENSE_INFO[name]
        assert f"[{info.kind}] {info.paper}" in line and info.cost in line and info.needs in line
    assert "arXiv 2502.14744" in lines[DEFENSES.names().index("hiddendetect")]
