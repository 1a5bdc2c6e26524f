"""Gemma lineage: Gemma 3 (SigLIP tower, Gemma decoder with sliding and full attention layers).

Example:
    >>> from vlmshield.testing.families.gemma import SPECS
    >>> SPECS[0].image_token
    '<image_soft_token>'
"""

from __future__ import annotations

from vlmshield.testing import chat_templates as T
from vlmshield.testing._spec import (
    LM_HEAD_DIM,
    TOKENIZER,
    TOKENIZER_IDS,
    C,
    FamilySpec,
    Tok,
    TokAttr,
    gemma_tokenizer,
    lm,
    vision,
)

_GEMMA3_NAMED = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
# SigLIP on 32 px images with 8 px patches: 4 x 4 patches average-pooled to 2 x 2 = 4 tokens.
_GEMMA3_SIGLIP = C("SiglipVisionConfig", vision(image_size=32, patch_size=8))

SPECS = (
    FamilySpec(
        model_type="gemma3",
        imitates="google/gemma-3-4b-it",
        model_class="Gemma3ForConditionalGeneration",
        tokenizer=gemma_tokenizer(named=_GEMMA3_NAMED, extra=("<start_of_turn>", "<end_of_turn>")),
        processor=C(
            "Gemma3Processor",
            {
                "image_processor": C(
                    "Gemma3ImageProcessorPil", {"size": {"height": 32, "width": 32}, "do_pan_and_scan": False}
                ),
                "tokenizer": TOKENIZER,
                "image_seq_length": 4,
            },
        ),
        config=C(
            "Gemma3Config",
            {
                "text_config": C(
                    "Gemma3TextConfig",
                    # Local (sliding window) and global layers alternate; the window never bites.
                    lm(
                        query_pre_attn_scalar=LM_HEAD_DIM,
                        layer_types=["sliding_attention", "full_attention"],
                        sliding_window=512,
                    ),
                ),
                "vision_config": _GEMMA3_SIGLIP,
                "mm_tokens_per_image": 4,
                "boi_token_index": Tok("<start_of_image>"),
                "eoi_token_index": Tok("<end_of_image>"),
                "image_token_index": Tok("<image_soft_token>"),
            },
        ),
        chat_template=T.GEMMA3,
        template_source="google/gemma-3-4b-it",
        image_token="<image_soft_token>",
        generation={**TOKENIZER_IDS, "eos_token_id": [TokAttr("eos_token_id"), Tok("<end_of_turn>")]},
        family_generation={"do_sample": True, "top_k": 64, "top_p": 0.95},
        generation_source="google/gemma-3-4b-it generation_config.json",
        approximations="32 px images (896 px real), 4 image tokens (256 real); no pan-and-scan.",
    ),
)
