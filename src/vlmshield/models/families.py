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
        text_only_via_tokenizer: the processor refuses prompts without an image (PaliGemma), so
            image-free batches are tokenized by the tokenizer itself.
        generated_token_type: the ``token_type_ids`` value of generated tokens where it differs from
            the last prompt token's (PaliGemma's prefix LM: 1, the answer is causal); a reference
            decode loop that appends tokens by hand needs it.
        skip_layer_types: class names of decoder layers that are not part of the residual stream
            CMRM reads and steers (Mllama's cross-attention layers: they run only when an image is
            present, so a text-only input has no state there).
        image_backend: the image processor backend to load (``"pil"`` or ``"torchvision"``) where
            transformers' default one is wrong (Mllama's torchvision processor mishandles a batch with
            a row without images); ``None``: transformers' choice.
        mixed_batches_exact: a row without an image gives the same tokens in a batch with image
            rows as alone. False for Mllama: transformers 5.24 masks a text-only row's cross-attention
            MLP but not its attention output, so that row attends uniformly over the batch's padded
            image tiles (run such rows in their own batch when exactness matters).
        shared_prefix: CoCA may prefill the prefix its two branches share once and continue both from
            its KV cache (:mod:`vlmshield.defenses.coca_prefix`). True where positions follow the
            attention mask and the contract test finds the same tokens as the plain layout; False
            where a family computes positions its own way (Qwen-VL's and GLM-4.1V's multimodal rotary
            positions keep per-batch state, Gemma 4's inputs carry image positions), attends
            bidirectionally over the prompt (PaliGemma) or carries convolution state (LFM2-VL).
        status: ``"supported"``, or why the family cannot run here (shown by ``vlmshield list``).
    """

    model_type: str
    display: str
    nested_images: bool
    max_images: int
    layer_paths: tuple[str, ...]
    system_text: bool = False
    text_only_via_tokenizer: bool = False
    generated_token_type: int | None = None
    skip_layer_types: tuple[str, ...] = ()
    image_backend: str | None = None
    mixed_batches_exact: bool = True
    shared_prefix: bool = False
    status: str = "supported"


_LM = ("model.language_model.layers", "language_model.model.layers", "language_model.layers")
_TEXT = ("model.text_model.layers", "text_model.layers")

FAMILIES: dict[str, FamilyInfo] = {
    f.model_type: f
    for f in (
        FamilyInfo("llava", "LLaVA-1.5", False, 1, _LM, shared_prefix=True),
        FamilyInfo("llava_next", "LLaVA-NeXT", False, 1, _LM, shared_prefix=True),
        FamilyInfo("qwen2_vl", "Qwen2-VL", False, 16, _LM),
        FamilyInfo("qwen2_5_vl", "Qwen2.5-VL", False, 16, _LM),
        FamilyInfo("idefics3", "Idefics3", True, 8, _TEXT, shared_prefix=True),
        FamilyInfo("smolvlm", "SmolVLM", True, 8, _TEXT, shared_prefix=True),
        FamilyInfo("gemma3", "Gemma 3", True, 8, _LM, shared_prefix=True),
        FamilyInfo("qwen3_vl", "Qwen3-VL", False, 16, _LM),
        FamilyInfo("qwen3_vl_moe", "Qwen3-VL-MoE", False, 16, _LM),
        FamilyInfo("qwen3_5", "Qwen3.5", False, 16, _LM),
        FamilyInfo("qwen3_5_moe", "Qwen3.5-MoE", False, 16, _LM),
        FamilyInfo("gemma4", "Gemma 4", True, 8, _LM, system_text=True),
        FamilyInfo("llava_onevision", "LLaVA-OneVision", False, 8, _LM, shared_prefix=True),
        FamilyInfo("internvl", "InternVL 3", False, 8, _LM, shared_prefix=True),
        FamilyInfo("mistral3", "Mistral Small 3.1", False, 8, _LM, shared_prefix=True),
        FamilyInfo("aya_vision", "Aya Vision", False, 8, _LM, shared_prefix=True),
        FamilyInfo("idefics2", "Idefics2", True, 8, _TEXT, shared_prefix=True),
        FamilyInfo(
            "llama4",
            "Llama 4",
            False,
            8,
            _LM,
            status="blocked: transformers 5.24's Llama4ForConditionalGeneration.forward reads "
            "outputs.image_outputs, which its language model's output lacks (AttributeError on every "
            "forward pass)",
        ),
        FamilyInfo("glm4v", "GLM-4.1V", False, 8, _LM),
        FamilyInfo("lfm2_vl", "LFM2-VL", True, 8, _LM),
        FamilyInfo("cohere2_vision", "Command A Vision", False, 8, _LM, shared_prefix=True),
        FamilyInfo(
            "mllama",
            "Llama 3.2 Vision",
            True,
            1,
            _LM,
            skip_layer_types=("MllamaCrossAttentionDecoderLayer",),
            image_backend="pil",
            mixed_batches_exact=False,
        ),
        FamilyInfo(
            "paligemma", "PaliGemma 2", True, 1, _LM, text_only_via_tokenizer=True, generated_token_type=1
        ),
    )
}

#: Paths tried for architectures that are not in :data:`FAMILIES`.
GENERIC_LAYER_PATHS: tuple[str, ...] = (*_LM, *_TEXT, "model.layers")


def family_info(model_type: str) -> FamilyInfo:
    """The row for ``model_type``; unknown types get a generic row (flat images, 8 images max)."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    return FamilyInfo(model_type, model_type, False, 8, GENERIC_LAYER_PATHS)
