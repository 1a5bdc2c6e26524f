"""Model inputs rebuilt from encoded ones, remembering which encoding they came from.

A defense may hand ``generate`` a rearranged copy of what :meth:`VLM.encode` returned (CoCA's shared
prefill, pre-encoded image features); the copy's rows are the encoding's rows, in the same order.
Wrappers that match rows to requests by the encoded object (the server's token streaming) follow
``source`` back to it.

Example:
    >>> from transformers import BatchFeature
    >>> encoded = BatchFeature({"input_ids": [[1, 2]]})
    >>> derive(encoded, {"input_ids": [[0, 1, 2]]}).source is encoded
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import BatchFeature


class DerivedInputs(BatchFeature):
    """A :class:`~transformers.BatchFeature` with a ``source``: the encoding it was built from."""

    source: Any = None


def derive(encoded: Any, values: Mapping[str, Any]) -> DerivedInputs:
    """``values`` as model inputs whose rows are ``encoded``'s (same rows, same order)."""
    out = DerivedInputs(dict(values))
    out.source = getattr(encoded, "source", None) or encoded
    return out


def source_of(inputs: Any) -> Any:
    """The encoding ``inputs`` was derived from (``inputs`` itself when not derived)."""
    return getattr(inputs, "source", None) or inputs
