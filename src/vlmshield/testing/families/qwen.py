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


def qwen_tokenizer(cls: str = "Qwen2Tokenizer", extra: tuple[str, ...] = ()) -> TokenizerSpec:
    """Byte-level BPE with Qwen's special tokens; eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos."""
    return TokenizerSpec(
        cls=cls,
        style="bytelevel",
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
)
