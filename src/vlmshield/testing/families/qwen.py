"""Qwen-VL lineage: Qwen2-VL and Qwen2.5-VL (dynamic-resolution ViT, M-RoPE decoder).

Example:
    >>> from vlmshield.testing.families.qwen import SPECS
    >>> [s.model_type for s in SPECS][:2]
    ['qwen2_vl', 'qwen2_5_vl']
"""

from __future__ import annotations

from typing import Any

from vlmshield.testing import chat_templates as T
from vlmshield.testing._spec import (
    DROP,
    LM_HIDDEN,
    TOKENIZER,
    VIS_HEADS,
    VIS_HIDDEN,
    VIS_INTERMEDIATE,
    VIS_LAYERS,
    C,
    FamilySpec,
    Tok,
    TokenizerSpec,
    lm,
)

QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def qwen_tokenizer(
    cls: str = "Qwen2Tokenizer", extra: tuple[str, ...] = (), named: dict[str, str] | None = None
) -> TokenizerSpec:
    """Byte-level BPE with Qwen's special tokens; eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos."""
    return TokenizerSpec(
        cls=cls,
        style="bytelevel",
        named=dict(named or {}),
        extra=(*QWEN_SPECIALS, *extra),
        kwargs={
            "unk_token": None,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    )


# Qwen's vision side: 14 px patches merged 2x2, every image resized to about 56 x 56 pixels
# (``smart_resize`` keeps the aspect ratio: 4 image tokens for a square image, 2 to about 20 otherwise).
def qwen_pixels(patch: int, pixels: int, **extra: Any) -> dict[str, Any]:
    """Arguments of Qwen's image and video processors for about ``pixels`` pixels per image."""
    return {
        "size": {"shortest_edge": pixels, "longest_edge": pixels},
        "patch_size": patch,
        "temporal_patch_size": 2,
        "merge_size": 2,
        **extra,
    }


_QWEN2 = qwen_pixels(14, 56 * 56)

QWEN_IDS = {
    "image_token_id": Tok("<|image_pad|>"),
    "video_token_id": Tok("<|video_pad|>"),
    "vision_start_token_id": Tok("<|vision_start|>"),
    "vision_end_token_id": Tok("<|vision_end|>"),
}
QWEN_GENERATION = {
    "bos_token_id": Tok("<|endoftext|>"),
    "eos_token_id": [Tok("<|im_end|>"), Tok("<|endoftext|>")],
    "pad_token_id": Tok("<|endoftext|>"),
}
# As in the real checkpoints: bos = pad = <|endoftext|>, eos = <|im_end|>; mrope_section splits
# head_dim / 2 rotary frequencies into temporal, height and width parts.
_QWEN2_TEXT = lm(
    head_dim=DROP,
    bos_token_id=Tok("<|endoftext|>"),
    pad_token_id=Tok("<|endoftext|>"),
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
)


def _qwen2_processor(cls: str) -> C:
    return C(
        cls,
        {
            "image_processor": C("Qwen2VLImageProcessorPil", _QWEN2),
            "tokenizer": TOKENIZER,
            "video_processor": C("Qwen2VLVideoProcessor", _QWEN2),
        },
    )


# Qwen2-VL-7B-Instruct and Qwen2.5-VL-7B-Instruct generation_config.json.
_QWEN2_SAMPLING = {"do_sample": True, "repetition_penalty": 1.05, "top_k": 1, "top_p": 0.001}

# Qwen3-VL: 16 px patches merged 2x2; about 64 x 64 px per image -> 4 tokens when square.
_QWEN3 = qwen_pixels(16, 64 * 64)


def _qwen3_vision(**extra: Any) -> dict[str, Any]:
    return {
        "depth": VIS_LAYERS,
        "hidden_size": VIS_HIDDEN,
        "intermediate_size": VIS_INTERMEDIATE,
        "num_heads": VIS_HEADS,
        "out_hidden_size": LM_HIDDEN,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # learned position embeddings of a 4 x 4 patch grid, interpolated to the image's grid
        "num_position_embeddings": 16,
        **extra,
    }


def _qwen3_text(**extra: Any) -> dict[str, Any]:
    return lm(
        bos_token_id=Tok("<|endoftext|>"),
        pad_token_id=Tok("<|endoftext|>"),
        # interleaved M-RoPE, as Qwen3-VL's rope_scaling (mrope_section [24, 20, 20] of 64 real)
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        **extra,
    )


def _qwen3_processor(image_processor: str = "Qwen2VLImageProcessorPil") -> C:
    return C(
        "Qwen3VLProcessor",
        {
            "image_processor": C(image_processor, _QWEN3),
            "tokenizer": TOKENIZER,
            "video_processor": C("Qwen3VLVideoProcessor", _QWEN3),
        },
    )


def _qwen3_5_text(**extra: Any) -> dict[str, Any]:
    """Gated DeltaNet (linear attention) and full attention layers (3:1 real); a quarter of head_dim
    rotates (4 frequencies of head_dim 32, split 2/1/1 by interleaved M-RoPE)."""
    return lm(
        head_dim=32,
        bos_token_id=Tok("<|endoftext|>"),
        pad_token_id=Tok("<|endoftext|>"),
        layer_types=["linear_attention", "full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        **extra,
    )


_QWEN3_5_TEMPLATE_SOURCE = (
    "written to the documented format: Qwen3-VL-8B-Instruct's ChatML template (Qwen3.5's published "
    "template, with its thinking-mode switches, was not available offline)"
)
_QWEN3_5_SAMPLING = {"do_sample": True, "top_k": 20, "top_p": 0.95, "temperature": 0.6}
_QWEN3_5_SAMPLING_SOURCE = (
    "Qwen3 thinking-mode defaults (Qwen/Qwen3-8B generation_config.json); Qwen3.5's own file was "
    "not available offline"
)

# Qwen3-VL Instruct checkpoints' sampling settings (their generation_config.json and model card).
_QWEN3_SAMPLING = {"do_sample": True, "top_k": 20, "top_p": 0.8, "temperature": 0.7}

SPECS = (
    FamilySpec(
        model_type="qwen2_vl",
        imitates="Qwen/Qwen2-VL-2B-Instruct",
        model_class="Qwen2VLForConditionalGeneration",
        tokenizer=qwen_tokenizer(),
        processor=_qwen2_processor("Qwen2VLProcessor"),
        config=C(
            "Qwen2VLConfig",
            {
                "text_config": _QWEN2_TEXT,
                "vision_config": {
                    "depth": VIS_LAYERS,
                    "embed_dim": VIS_HIDDEN,
                    "hidden_size": LM_HIDDEN,
                    "num_heads": VIS_HEADS,
                    "mlp_ratio": 2,
                    "patch_size": 14,
                    "spatial_merge_size": 2,
                    "temporal_patch_size": 2,
                },
                **QWEN_IDS,
            },
        ),
        chat_template=T.QWEN2_VL,
        template_source="Qwen/Qwen2-VL-2B-Instruct",
        image_token="<|image_pad|>",
        generation=QWEN_GENERATION,
        family_generation={**_QWEN2_SAMPLING, "temperature": 0.01},
        generation_source="Qwen/Qwen2-VL-7B-Instruct generation_config.json",
        requires=("torchvision",),
        approximations="about 56 x 56 px per image (4 tokens when square); M-RoPE sections [2, 3, 3].",
    ),
    FamilySpec(
        model_type="qwen2_5_vl",
        imitates="Qwen/Qwen2.5-VL-3B-Instruct",
        model_class="Qwen2_5_VLForConditionalGeneration",
        tokenizer=qwen_tokenizer(),
        processor=_qwen2_processor("Qwen2_5_VLProcessor"),
        config=C(
            "Qwen2_5_VLConfig",
            {
                "text_config": _QWEN2_TEXT,
                "vision_config": {
                    "depth": VIS_LAYERS,
                    "hidden_size": VIS_HIDDEN,
                    "intermediate_size": VIS_INTERMEDIATE,
                    "num_heads": VIS_HEADS,
                    "out_hidden_size": LM_HIDDEN,
                    "patch_size": 14,
                    "spatial_merge_size": 2,
                    "temporal_patch_size": 2,
                    "window_size": 112,
                    "fullatt_block_indexes": [VIS_LAYERS - 1],
                },
                **QWEN_IDS,
            },
        ),
        chat_template=T.QWEN2_5_VL,
        template_source="Qwen/Qwen2.5-VL-3B-Instruct (the same text as Qwen2-VL-2B-Instruct's)",
        image_token="<|image_pad|>",
        generation=QWEN_GENERATION,
        family_generation={**_QWEN2_SAMPLING, "temperature": 0.1},
        generation_source="Qwen/Qwen2.5-VL-7B-Instruct generation_config.json",
        requires=("torchvision",),
        approximations="as Qwen2-VL; windowed vision attention with a 112 px window.",
    ),
    FamilySpec(
        model_type="qwen3_vl",
        imitates="Qwen/Qwen3-VL-2B-Instruct",
        model_class="Qwen3VLForConditionalGeneration",
        tokenizer=qwen_tokenizer(),
        processor=_qwen3_processor(),
        config=C(
            "Qwen3VLConfig",
            {
                "text_config": _qwen3_text(),
                # DeepStack: the first vision layer's features are added to the first decoder layer
                "vision_config": _qwen3_vision(deepstack_visual_indexes=[0]),
                **QWEN_IDS,
            },
        ),
        chat_template=T.QWEN3_VL,
        template_source="Qwen/Qwen3-VL-8B-Instruct",
        image_token="<|image_pad|>",
        generation=QWEN_GENERATION,
        family_generation=_QWEN3_SAMPLING,
        generation_source="Qwen/Qwen3-VL-8B-Instruct generation_config.json and model card",
        requires=("torchvision",),
        approximations="about 64 x 64 px per image (4 tokens when square); one DeepStack level (3 real); "
        "a 4 x 4 grid of learned vision position embeddings (48 x 48 real).",
    ),
    FamilySpec(
        model_type="qwen3_vl_moe",
        imitates="Qwen/Qwen3-VL-30B-A3B-Instruct",
        model_class="Qwen3VLMoeForConditionalGeneration",
        tokenizer=qwen_tokenizer(),
        processor=_qwen3_processor(),
        config=C(
            "Qwen3VLMoeConfig",
            {
                "text_config": _qwen3_text(
                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1
                ),
                "vision_config": _qwen3_vision(deepstack_visual_indexes=[0]),
                **QWEN_IDS,
            },
        ),
        chat_template=T.QWEN3_VL,
        template_source="Qwen/Qwen3-VL-30B-A3B-Instruct (the same text as Qwen3-VL-8B-Instruct's)",
        image_token="<|image_pad|>",
        generation=QWEN_GENERATION,
        family_generation=_QWEN3_SAMPLING,
        generation_source="Qwen/Qwen3-VL-30B-A3B-Instruct generation_config.json and model card",
        requires=("torchvision",),
        approximations="as Qwen3-VL; 4 experts, 2 per token (128 and 8 real).",
    ),
    FamilySpec(
        model_type="qwen3_5",
        imitates="Qwen/Qwen3.5-27B",
        model_class="Qwen3_5ForConditionalGeneration",
        tokenizer=qwen_tokenizer("Qwen3_5Tokenizer"),
        processor=_qwen3_processor(),
        config=C(
            "Qwen3_5Config",
            {
                "text_config": _qwen3_5_text(),
                "vision_config": _qwen3_vision(),
                **QWEN_IDS,
            },
        ),
        chat_template=T.QWEN3_VL,
        template_source=_QWEN3_5_TEMPLATE_SOURCE,
        image_token="<|image_pad|>",
        generation=QWEN_GENERATION,
        family_generation=_QWEN3_5_SAMPLING,
        generation_source=_QWEN3_5_SAMPLING_SOURCE,
        requires=("torchvision",),
        approximations="1 linear-attention + 1 full-attention layer (3:1 real); head_dim 32; the "
        "template is Qwen3-VL's.",
    ),
    FamilySpec(
        model_type="qwen3_5_moe",
        imitates="Qwen/Qwen3.5-397B-A17B",
        model_class="Qwen3_5MoeForConditionalGeneration",
        tokenizer=qwen_tokenizer("Qwen3_5Tokenizer"),
        processor=_qwen3_processor(),
        config=C(
            "Qwen3_5MoeConfig",
            {
                # every layer a mixture of 4 experts, 2 per token, plus a shared expert (256 real)
                "text_config": _qwen3_5_text(
                    intermediate_size=DROP,
                    num_experts=4,
                    num_experts_per_tok=2,
                    moe_intermediate_size=32,
                    shared_expert_intermediate_size=32,
                ),
                "vision_config": _qwen3_vision(),
                **QWEN_IDS,
            },
        ),
        chat_template=T.QWEN3_VL,
        template_source=_QWEN3_5_TEMPLATE_SOURCE,
        image_token="<|image_pad|>",
        generation=QWEN_GENERATION,
        family_generation=_QWEN3_5_SAMPLING,
        generation_source=_QWEN3_5_SAMPLING_SOURCE,
        requires=("torchvision",),
        approximations="as Qwen3.5, with 4 experts, 2 per token, and a shared expert (256 and 10 real).",
    ),
)
