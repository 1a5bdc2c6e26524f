"""Training-free defenses: ``none`` (baseline), ``coca``, ``ecso``, ``cmrm``, ``guard``, ``adashield``,
``hiddendetect``, and compositions of them (``part+part``, registered as ``compose``).

Each defense's paper, type, cost profile and needs are in :data:`DEFENSE_INFO`.

Example:
    >>> from vlmshield.defenses import build_defense
    >>> defense = build_defense("coca:alpha=1.5")  # doctest: +SKIP
"""

from vlmshield.defenses.base import Defense, DefenseResult
from vlmshield.defenses.info import DEFENSE_INFO, DefenseInfo
from vlmshield.defenses.none import NoDefense
from vlmshield.defenses.registry import (
    DEFENSES,
    DefenseConfig,
    build_defense,
    defense_from_spec,
    validate_config,
)
from vlmshield.defenses.spec import parse_defense_spec

DEFENSES.register("none", NoDefense)

from vlmshield.defenses import adashield, cmrm, coca, compose, ecso, guard, hiddendetect  # noqa: E402  (register themselves)  # noqa: E402  (register themselves)

__all__ = [
    "DEFENSES",
    "DEFENSE_INFO",
    "Defense",
    "DefenseConfig",
    "DefenseInfo",
    "DefenseResult",
    "NoDefense",
    "adashield",
    "build_defense",
    "cmrm",
    "coca",
    "compose",
    "defense_from_spec",
    "ecso",
    "guard",
    "hiddendetect",
    "parse_defense_spec",
    "validate_config",
]
