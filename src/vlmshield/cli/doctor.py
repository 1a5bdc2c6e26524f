"""``vlmshield doctor``: will a checkpoint work with vlmshield's defenses? Checked in seconds, without
generating text (see :mod:`vlmshield.models.doctor`).

Example:
    $ vlmshield doctor --model checkpoints/my-vlm
    $ vlmshield doctor --model checkpoints/my-vlm --layers-path model.decoder.blocks --json
"""

from __future__ import annotations

import typer

from vlmshield.cli.common import DtypeOpt

_MARKS = {"ok": "[green]ok[/green]", "fail": "[red]FAIL[/red]", "skip": "[yellow]skipped[/yellow]"}


def doctor(
    model: str = typer.Option(..., "--model", "-m", help="A checkpoint directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for CI)."),
    layers_path: str | None = typer.Option(
        None, "--layers-path", help="Attribute path of the decoder layers, e.g. model.language_model.layers."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu (default), cuda, cuda:N or auto."),
    dtype: str = DtypeOpt,
) -> None:
    """Check MODEL: architecture, decoder layers, chat template, inputs, and what each defense needs.

    Exit code 0 when every check passes, 2 otherwise.
    """
    from vlmshield.models.doctor import diagnose

    report = diagnose(model, layers_path=layers_path, device=device, dtype=dtype)
    if as_json:
        typer.echo(report.to_json())
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"vlmshield doctor: {model} ({report.model_type})")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for check in report.checks:
            table.add_row(check.name, _MARKS[check.status], check.detail)
        console = Console()
        console.print(table)
        for check in report.checks:  # each reason again on one unwrapped line, for logs and grep
            if check.status == "fail":
                console.print(f"{check.name}: {check.detail}", soft_wrap=True, markup=False, highlight=False)
        console.print("[green]all checks passed[/green]" if report.ok else "[red]some checks failed[/red]")
    if not report.ok:
        raise SystemExit(2)  # not typer.Exit: with standalone_mode=False click would swallow its code


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
