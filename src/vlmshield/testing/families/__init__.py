"""The tiny-checkpoint family table: one :class:`~vlmshield.testing._spec.FamilySpec` per family.

Each module holds the data of one lineage; :data:`SPECS` joins them, keyed by ``model_type``. Adding a
family is adding a spec here (and a row in :mod:`vlmshield.models.families`); the conformance tests
then run on it with no new test code.

Example:
    >>> from vlmshield.testing.families import SPECS
    >>> SPECS["llava"].imitates
    'llava-hf/llava-1.5-7b-hf'
"""

from __future__ import annotations

from vlmshield.testing._spec import FamilySpec
from vlmshield.testing.families import gemma, idefics, llava, meta, others, qwen

SPECS: dict[str, FamilySpec] = {
    spec.model_type: spec for module in (llava, qwen, idefics, gemma, meta, others) for spec in module.SPECS
}

__all__ = ["SPECS"]
