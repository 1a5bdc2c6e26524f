"""`vlmshield list families`, the README's table and the two family tables agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmshield.cli.main import main
from vlmshield.models.families import FAMILIES as ROWS
from vlmshield.testing import FAMILIES

README = Path(__file__).resolve().parents[2] / "README.md"


def _out(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None)
    return capsys.readouterr().out


def test_every_tiny_family_has_a_row_and_every_row_a_tiny_family():
    assert set(FAMILIES) == set(ROWS)
    assert len([f for f in ROWS.values() if f.status == "supported"]) >= 20


def test_list_families_json(capsys):
    rows = json.loads(_out(["list", "families", "--json"], capsys))
    assert [r["model_type"] for r in rows] == list(ROWS)
    for r in rows:
        assert r["display"] == ROWS[r["model_type"]].display and r["status"] and r["tiny_checkpoint"]


def test_list_families_text_shows_status(capsys):
    out = _out(["list", "families"], capsys)
    for name, info in ROWS.items():
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{name} "))
        assert info.display in line and (info.status == "supported" or info.status in line)


def test_the_readme_table_lists_every_family():
    text = README.read_text(encoding="utf-8")
    for name, info in ROWS.items():
        row = next((x for x in text.splitlines() if x.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README has no row for {name}"
        assert info.display in row and ("supported" in row) == (info.status == "supported")


def test_the_tiny_checkpoint_docs_list_every_family():
    text = (README.parent / "docs" / "tiny_checkpoints.md").read_text(encoding="utf-8")
    for name in FAMILIES:
        assert f"| `{name}` |" in text, f"docs/tiny_checkpoints.md has no row for {name}"
