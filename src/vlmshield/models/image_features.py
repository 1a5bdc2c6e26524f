"""Encode repeated images once: a batch whose rows are copies of its first rows' images.

CoCA's batch is ``[P rows; Q rows]`` with the same images in both halves. transformers (5.x) runs
the vision encoder on every image of a batch before prefill, then scatters the features into the
image placeholders in (row, position) order; it also accepts those features pre-encoded, as
``mm_encoder_outputs``. :func:`encode_images_once` encodes the images of the first ``1/copies`` of
the rows and hands ``generate`` the features repeated ``copies`` times, so each distinct image goes
through the vision tower once. Families whose forward takes no ``mm_encoder_outputs`` (Mllama's
cross-attention) get their inputs back unchanged.

Example:
    >>> inputs = vlm.encode([*p_branches, *q_branches])  # doctest: +SKIP
    >>> shared = encode_images_once(vlm, inputs, copies=2)  # doctest: +SKIP
    >>> vlm.generate_from_inputs(shared, config)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from vlmshield.models.derived_inputs import derive

if TYPE_CHECKING:
    from vlmshield.models.adapter import VLM

#: Input names that carry pixels (the names transformers' generate looks for before encoding).
PIXEL_KEYS = ("pixel_values", "pixel_values_images", "image_patches")


def _repeat(features: Any, copies: int) -> Any:
    """Features of images ``[A, B]`` -> ``[A, B, A, B]`` (a tensor along dim 0, or a list)."""
    if isinstance(features, torch.Tensor):
        return features.repeat((copies,) + (1,) * (features.dim() - 1))
    return list(features) * copies


def image_encoder_kwargs(vlm: VLM, inputs: Any) -> tuple[Any, dict[str, Any]] | None:
    """The family's image encoder and the entries of ``inputs`` it reads, or None where the model
    cannot take pre-encoded features (or ``inputs`` has no pixels)."""
    model = vlm.model
    if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:  # type: ignore[attr-defined]
        return None
    encoder = getattr(model.base_model, "get_image_features", None)  # type: ignore[attr-defined]
    if encoder is None:
        return None
    kwargs = {k: inputs[k] for k in inspect.signature(encoder).parameters if k in inputs}
    if not any(k in kwargs for k in PIXEL_KEYS):
        return None
    return encoder, kwargs


@torch.inference_mode()
def encode_images_once(vlm: VLM, inputs: Any, copies: int = 2) -> Any:
    """``inputs`` (rows ``[R; R; ...]``, ``copies`` repeats of the same images) with the pixels
    replaced by pre-encoded features of the first repeat's images, repeated ``copies`` times.

    Every tensor the image encoder reads (pixel values, image sizes, grids, pixel masks) is cut to
    its first ``1/copies`` along dim 0: they list images (or rows) in row order, so the first part
    is the first repeat's. Entries other than the pixels stay, so that e.g. Qwen's multimodal
    positions are computed as usual. Returns ``inputs`` itself where this does not apply.
    """
    found = image_encoder_kwargs(vlm, inputs)
    if found is None or copies == 1:
        return inputs
    encoder, kwargs = found
    first: dict[str, Any] = {}
    for key, value in kwargs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] % copies:
            return inputs
        first[key] = value[: value.shape[0] // copies]
    out = encoder(**first, return_dict=True)
    fields: dict[str, Any] = {"pooler_output": _repeat(out.pooler_output, copies)}
    deepstack = getattr(out, "deepstack_features", None)
    if deepstack is not None:
        fields["deepstack_features"] = [_repeat(layer, copies) for layer in deepstack]
    shared = {k: v for k, v in inputs.items() if k not in PIXEL_KEYS}
    shared["mm_encoder_outputs"] = {"image": type(out)(**fields)}
    return derive(inputs, shared)
