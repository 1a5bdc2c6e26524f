"""The defense registry and ``build_defense`` from a spec string.

Example:
    >>> from vlmshield.defenses import build_defense, DEFENSES
    >>> "coca" in DEFENSES
    True
    >>> build_defense("none").name
    'none'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from vlmshield.defenses.base import Defense
from vlmshield.defenses.spec import parse_defense_spec
from vlmshield.errors import UserInputError
from vlmshield.registry import Registry


class DefenseRegistry(Registry[Callable[..., Defense]]):
    """The defense registry; a name with ``+`` (a composition, ``cmrm+coca``) resolves to ``compose``
    after each part's name is checked (with "did you mean")."""

    def get(self, name: str) -> Callable[..., Defense]:
        if "+" in name:
            for part in name.split("+"):
                super().get(part.strip())
            return super().get("compose")
        return super().get(name)


DEFENSES: Registry[Callable[..., Defense]] = DefenseRegistry("defense")

C = TypeVar("C", bound=BaseModel)


class DefenseConfig(BaseModel):
    """Base of every defense's validated configuration: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_config(cls: type[C], defense: str, args: dict[str, Any]) -> C:
    """Build ``cls(**args)``, turning validation errors into one actionable line."""
    try:
        return cls(**args)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "arguments"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                known = ", ".join(cls.model_fields)
                msg = f"unknown argument (known: {known})"
            parts.append(f"{loc}: {msg}")
        raise UserInputError(f"invalid {defense} arguments: " + "; ".join(parts)) from None


def build_defense(spec: str) -> Defense:
    """Parse ``name:key=value,...`` (or ``@file.json``, or parts joined by ``+``) and build the defense.

    Example:
        >>> build_defense("coca:alpha=1.5").spec()["alpha"]
        1.5
        >>> build_defense("adashield+coca").name
        'adashield+coca'
    """
    name, args = parse_defense_spec(spec)
    factory = DEFENSES.get(name)
    return factory(**args)


def defense_from_spec(spec: Mapping[str, Any]) -> Defense:
    """Rebuild a defense from its ``spec()`` (e.g. one recorded in a run manifest).

    Keys that record facts rather than arguments (``DefenseInfo.derived_keys``, e.g. CMRM's
    ``vectors_metadata``) are dropped; ``*_file`` keys are read as in the spec syntax.

    Example:
        >>> defense_from_spec(build_defense("coca:alpha=2").spec()).spec()["alpha"]
        2.0
    """
    from vlmshield.defenses.info import defense_info
    from vlmshield.defenses.spec import resolve_file_args

    if not isinstance(spec.get("name"), str):
        raise UserInputError("a defense spec needs a 'name' string")
    name = spec["name"]
    info = defense_info(name)
    dropped = set(info.derived_keys) if info else set()
    args = {k: v for k, v in spec.items() if k != "name" and k not in dropped}
    return DEFENSES.get(name)(**resolve_file_args(args))
