"""``vlmshield list``: families, defenses, benchmarks and judges.

Example:
    $ vlmshield list families
    $ vlmshield list families --json
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import typer

from vlmshield.cli.common import print_json
from vlmshield.errors import UserInputError
from vlmshield.registry import suggest

_KINDS = ("families", "defenses", "benchmarks", "judges")


def family_rows() -> list[dict[str, Any]]:
    """One object per family: ``model_type``, ``display``, ``status``, and the tiny checkpoint it has
    (``imitates``, ``template_source``), in the family table's order.

    Example:
        >>> family_rows()[0]["model_type"]
        'llava'
    """
    from vlmshield.models.families import FAMILIES
    from vlmshield.testing.families import SPECS

    rows = []
    for name, info in FAMILIES.items():
        spec = SPECS.get(name)
        rows.append(
            {
                "model_type": name,
                "display": info.display,
                "status": info.status,
                "tiny_checkpoint": spec is not None,
                "imitates": spec.imitates if spec else None,
                "template_source": spec.template_source if spec else None,
            }
        )
    return rows


def _names(kind: str) -> list[str]:
    if kind == "families":
        return [
            f"{r['model_type']}  ({r['display']})"
            + ("" if r["status"] == "supported" else f"  {r['status']}")
            for r in family_rows()
        ]
    if kind == "defenses":
        from vlmshield.defenses import DEFENSES
        from vlmshield.defenses.info import describe_defenses

        return describe_defenses(DEFENSES.names())
    if kind == "benchmarks":
        return list(import_module("vlmshield.benchmarks").BENCHMARKS.names())
    return list(import_module("vlmshield.judges").JUDGES.names())


def list_cmd(
    kind: str | None = typer.Argument(None, help="families, defenses, benchmarks or judges."),
    as_json: bool = typer.Option(
        False, "--json", help="JSON: families as objects (model_type, display, status, ...), others as names."
    ),
) -> None:
    """List what vlmshield supports."""
    kinds = _KINDS if kind is None else (kind,)
    if kind is not None and kind not in _KINDS:
        raise UserInputError(
            f"unknown list {kind!r}{suggest(kind, list(_KINDS))} (known: {', '.join(_KINDS)})"
        )
    found: dict[str, Any] = {}
    for k in kinds:
        try:
            found[k] = family_rows() if (as_json and k == "families") else _names(k)
        except (ModuleNotFoundError, AttributeError):
            continue
    if as_json:
        print_json(found[kind] if kind is not None else found)
        return
    for k, names in found.items():
        typer.echo(f"{k}:")
        for n in names:
            typer.echo(f"  {n}")


def register(app: typer.Typer) -> None:
    app.command("list")(list_cmd)
