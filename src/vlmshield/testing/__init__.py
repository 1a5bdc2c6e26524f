"""Test helpers: tiny random-weight checkpoints of every supported VLM family, built offline
(:func:`tiny_checkpoint`, :func:`build_tiny_checkpoint`, :func:`build_from_spec` for a spec of your
own), and slow reference implementations to test fast code against (:mod:`vlmshield.testing.reference`).

Example:
    >>> from vlmshield.testing import FAMILIES, tiny_checkpoint
    >>> "llava" in FAMILIES
    True
    >>> path = tiny_checkpoint("qwen2_vl")  # doctest: +SKIP

See ``docs/tiny_checkpoints.md``.
"""

from __future__ import annotations

from vlmshield.testing.tiny import (
    BUILDER_VERSION,
    FAMILIES,
    FAMILY_GENERATION,
    build_from_spec,
    build_tiny_checkpoint,
    cache_root,
    tiny_checkpoint,
)

__all__ = [
    "BUILDER_VERSION",
    "FAMILIES",
    "FAMILY_GENERATION",
    "build_from_spec",
    "build_tiny_checkpoint",
    "cache_root",
    "tiny_checkpoint",
]
