"""What differs between VLM families, in one table.

Each family is keyed by transformers' ``model_type``. The model layer reads only this table, so adding
a family is adding a row (and a tiny checkpoint builder in :mod:`vlmshield.testing`).

Example:
    >>> FAMILIES["qwen2_vl"].nested_images
    False
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyInfo:
    """Per-family facts the adapter needs.

    Attributes:
        model_type: transformers' ``model_type``.
        display: human-readable name.
        nested_images: the processor wants one image list per prompt (Gemma 3, Idefics3, SmolVLM)
            instead of one flat list for the batch (LLaVA, Qwen).
        max_images: most images one prompt may carry (what the family was trained with).
        layer_paths: attribute paths tried, in order, to find the language model's decoder layers.
        system_text: the chat template wants a system turn's content as a plain string rather than
            a list of parts (Gemma 4's template prints a list as its Python repr).
    """

    model_type: str
    display: str
    nested_images: bool
    max_images: int
    layer_paths: tuple[str, ...]
    system_text: bool = False


_LM = ("model.language_model.layers", "language_model.model.layers", "language_model.layers")
_TEXT = ("model.text_model.layers", "text_model.layers")

FAMILIES: dict[str, FamilyInfo] = {
    f.model_type: f
    for f in (
        FamilyInfo("llava", "LLaVA-1.5", False, 1, _LM),
        FamilyInfo("llava_next", "LLaVA-NeXT", False, 1, _LM),
        FamilyInfo("qwen2_vl", "Qwen2-VL", False, 16, _LM),
        FamilyInfo("qwen2_5_vl", "Qwen2.5-VL", False, 16, _LM),
        FamilyInfo("idefics3", "Idefics3", True, 8, _TEXT),
        FamilyInfo("smolvlm", "SmolVLM", True, 8, _TEXT),
        FamilyInfo("gemma3", "Gemma 3", True, 8, _LM),
        FamilyInfo("qwen3_vl", "Qwen3-VL", False, 16, _LM),
        FamilyInfo("qwen3_vl_moe", "Qwen3-VL-MoE", False, 16, _LM),
        FamilyInfo("qwen3_5", "Qwen3.5", False, 16, _LM),
        FamilyInfo("gemma4", "Gemma 4", True, 8, _LM, system_text=True),
    )
}

#: Paths tried for architectures that are not in :data:`FAMILIES`.
GENERIC_LAYER_PATHS: tuple[str, ...] = (*_LM, *_TEXT, "model.layers")


def family_info(model_type: str) -> FamilyInfo:
    """The row for ``model_type``; unknown types get a generic row (flat images, 8 images max)."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    return FamilyInfo(model_type, model_type, False, 8, GENERIC_LAYER_PATHS)
