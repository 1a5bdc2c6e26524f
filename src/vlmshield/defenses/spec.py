"""The ``name:key=value,...`` defense syntax shared by ``generate``, ``eval`` and the Python API.

Values that hold commas or newlines (a principle, a template) come in through files: any key ending
in ``_file`` is read as UTF-8 text and passed on without the suffix (``principle_file=p.txt`` ->
``principle=<contents>``), or the whole spec can be a JSON file: ``@spec.json`` holding
``{"name": "coca", "alpha": 1.5, "principle": "..."}``.

Compositions join parts with ``+``, each part in this same syntax (``cmrm:level=sample+coca:alpha=1``,
``guard:model=M+@ecso.json``); see :mod:`vlmshield.defenses.compose`. A ``+`` starts a new part only
where a defense name (followed by ``:``, ``+`` or the end) or an ``@file`` follows it, so values such
as ``vectors=/runs/a+b/v.safetensors`` keep their ``+``; a value that does contain ``+name:`` goes in
a file. The composition's name is its parts' names joined by ``+``; its only argument is ``parts``.

Example:
    >>> parse_defense_spec("coca:alpha=1.5,position=system")
    ('coca', {'alpha': '1.5', 'position': 'system'})
    >>> parse_defense_spec("none")
    ('none', {})
    >>> parse_defense_spec("cmrm:level=sample,alpha=0.5+coca:alpha=1")
    ('cmrm+coca', {'parts': ['cmrm:level=sample,alpha=0.5', 'coca:alpha=1']})
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError


def _read_text(path: str, key: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserInputError(f"{key}: file not found: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{key}: cannot read {path} as UTF-8 text ({e})") from None


_PART_START = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(:|\+|$)")


def _starts_part(rest: str, known: list[str]) -> bool:
    """Whether the text after a ``+`` starts a new part (see the module docstring)."""
    if rest.lstrip().startswith(("@", "+")) or not rest.strip():
        return True  # a file part, or an empty part (refused with a message)
    m = _PART_START.match(rest)
    if not m:
        return False
    name, follow = m.group(1), m.group(2)
    if name in known or follow == ":":
        return True
    return bool(difflib.get_close_matches(name, known, n=1, cutoff=0.75))  # a typo gets "did you mean"


def split_composition(spec: str) -> list[str]:
    """The parts of a ``+``-joined spec (one part when it is not a composition).

    Example:
        >>> split_composition("guard:model=/m/a+b+ecso")
        ['guard:model=/m/a+b', 'ecso']
    """
    from vlmshield.defenses.registry import DEFENSES

    known = DEFENSES.names()
    parts, start = [], 0
    for i, ch in enumerate(spec):
        if ch == "+" and _starts_part(spec[i + 1 :], known):
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    parts = [p.strip() for p in parts]
    if len(parts) > 1 and any(not p for p in parts):
        raise UserInputError(f"empty part in the composition {spec!r}; write part+part, e.g. adashield+coca")
    return parts


def parse_defense_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a defense spec into its name and keyword arguments (``*_file`` keys resolved)."""
    spec = spec.strip()
    if not spec:
        raise UserInputError("empty defense spec; use e.g. 'coca:alpha=1.5' or 'none'")
    parts = split_composition(spec)
    if len(parts) > 1:
        names = [_part_name(p) for p in parts]
        return "+".join(names), {"parts": parts}
    if spec.startswith("@"):
        path = spec[1:]
        try:
            obj = json.loads(_read_text(path, "defense spec"))
        except json.JSONDecodeError as e:
            raise UserInputError(f"defense spec file {path} is not valid JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise UserInputError(f"defense spec file {path} must hold a JSON object with a 'name' string")
        return obj["name"], _resolve_files({k: v for k, v in obj.items() if k != "name"})
    name, _, rest = spec.partition(":")
    args: dict[str, Any] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise UserInputError(
                    f"bad defense argument {item!r} in {spec!r}; write name:key=value,key=value "
                    "(values with commas go in a file: key_file=PATH)"
                )
            if key in args:
                raise UserInputError(f"defense argument {key!r} given twice in {spec!r}")
            args[key] = value.strip()
    return name.strip(), _resolve_files(args)


def _part_name(part: str) -> str:
    if part.startswith("@"):
        return parse_defense_spec(part)[0]
    return part.partition(":")[0].strip()


def resolve_file_args(args: dict[str, Any]) -> dict[str, Any]:
    """``key_file=PATH`` arguments replaced by ``key=<contents of PATH>``."""
    return _resolve_files(args)


def _resolve_files(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key.endswith("_file"):
            target = key[: -len("_file")]
            if target in args:
                raise UserInputError(f"give either {target} or {key}, not both")
            out[target] = _read_text(str(value), key)
        else:
            out[key] = value
    return out
