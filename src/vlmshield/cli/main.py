"""The ``vlmshield`` command: a thin layer over the Python API.

Bad input prints one line (``error: ...``) and exits with code 2; ``--debug`` shows the traceback.
Usage errors (a missing or unknown option, a bad value, an unknown command) print click's short usage
message and exit with code 2 too, whichever click raised them (typer's vendored ``typer._click`` or the
standalone ``click`` package).

Example:
    $ vlmshield tiny build --family llava --out /tmp/tiny-llava
    $ vlmshield generate --model /tmp/tiny-llava --image cat.png --prompt "What is this?" --json
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass

import typer

from vlmshield.errors import VlmshieldError

app = typer.Typer(
    name="vlmshield",
    help="Training-free safety defenses for vision-language models, and their evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    from vlmshield.cli import generate, listing, tiny

    generate.register(app)
    listing.register(app)
    tiny.register(app)
    for optional in ("calibrate", "doctor", "ecso_data", "eval", "report", "serve"):
        try:
            module = __import__(f"vlmshield.cli.{optional}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"vlmshield.cli.{optional}":
                raise
            continue
        module.register(app)


def _quiet_transformers() -> None:
    """No weight-loading progress bars on the command line (our own progress bars stay)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class ClickExceptionTypes:
    """The exception classes of every importable click: typer's vendored copy (``typer._click``, with
    ``Exit`` and ``Abort`` in ``typer.exceptions``; typer 0.29 and later) and the standalone ``click``
    package (what older typer releases raise)."""

    click: tuple[type[BaseException], ...]  # ClickException: usage errors and the like (show + exit_code)
    exit: tuple[type[BaseException], ...]  # Exit: a requested exit with a code (--help, ctx.exit)
    abort: tuple[type[BaseException], ...]  # Abort: Ctrl-C / EOF at a prompt


def _click_exception_types() -> ClickExceptionTypes:
    found: dict[str, list[type[BaseException]]] = {"ClickException": [], "Exit": [], "Abort": []}
    for name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for cls_name, classes in found.items():
            cls = getattr(module, cls_name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in classes:
                classes.append(cls)
    return ClickExceptionTypes(tuple(found["ClickException"]), tuple(found["Exit"]), tuple(found["Abort"]))


def _exit_for_click(e: BaseException) -> SystemExit | None:
    """The :class:`SystemExit` for a click exception (after showing its message), else ``None``."""
    kinds = _click_exception_types()
    if isinstance(e, kinds.exit):
        return SystemExit(getattr(e, "exit_code", 0))
    if isinstance(e, kinds.abort):
        print("aborted", file=sys.stderr)
        return SystemExit(130)
    show = getattr(e, "show", None)
    code = getattr(e, "exit_code", None)
    if isinstance(e, kinds.click) or (callable(show) and isinstance(code, int)):
        # a click we do not know by name (another vendored copy) is recognised by its interface
        if callable(show):
            show()
        else:  # pragma: no cover - every ClickException has show()
            print(f"error: {e}", file=sys.stderr)
        return SystemExit(code if isinstance(code, int) else 2)
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, mapping vlmshield errors to one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("VLMSHIELD_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _quiet_transformers()
    _register_commands()
    try:
        app(args=args, prog_name="vlmshield", standalone_mode=False)
    except VlmshieldError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as e:  # click's usage errors (either click) and the like
        code = _exit_for_click(e)
        if code is None:
            raise
        if debug:
            traceback.print_exc()
        raise code from None


if __name__ == "__main__":
    main()
