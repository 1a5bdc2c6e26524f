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
    LM_HIDDEN,
    TOKENIZER,
    TOKENIZER_IDS,
    VOCAB,
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

_GEMMA4_NAMED = {
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
}
_GEMMA4_EXTRA = (
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
    "<|think|>",
    "<|tool>",
    "<tool|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    "<|video|>",
)
# Aspect-preserving resize to at most 70 pooled tokens of 3 x 3 patches of 4 px.
_GEMMA4_IMAGE = {"patch_size": 4, "pooling_kernel_size": 3, "max_soft_tokens": 70}

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
    FamilySpec(
        model_type="gemma4",
        imitates="google/gemma-4-e2b-it",
        model_class="Gemma4ForConditionalGeneration",
        tokenizer=gemma_tokenizer(named=_GEMMA4_NAMED, extra=_GEMMA4_EXTRA),
        processor=C(
            "Gemma4Processor",
            {
                "feature_extractor": C("Gemma4AudioFeatureExtractor"),
                "image_processor": C("Gemma4ImageProcessorPil", _GEMMA4_IMAGE),
                "tokenizer": TOKENIZER,
                "video_processor": C("Gemma4VideoProcessor", _GEMMA4_IMAGE),
                "image_seq_length": 70,
            },
        ),
        config=C(
            "Gemma4Config",
            {
                "text_config": C(
                    "Gemma4TextConfig",
                    lm(
                        layer_types=["sliding_attention", "full_attention"],
                        sliding_window=512,
                        global_head_dim=LM_HEAD_DIM,
                        hidden_size_per_layer_input=8,
                        vocab_size_per_layer_input=VOCAB,
                        final_logit_softcapping=30.0,
                    ),
                ),
                "vision_config": C(
                    "Gemma4VisionConfig",
                    vision(
                        num_key_value_heads=2,
                        head_dim=16,
                        patch_size=4,
                        pooling_kernel_size=3,
                        position_embedding_size=128,
                    ),
                ),
                "audio_config": None,
                "boi_token_id": Tok("<|image>"),
                "eoi_token_id": Tok("<image|>"),
                "image_token_id": Tok("<|image|>"),
                "video_token_id": Tok("<|video|>"),
                "boa_token_id": Tok("<|audio>"),
                "eoa_token_index": Tok("<audio|>"),
                "audio_token_id": Tok("<|audio|>"),
            },
        ),
        chat_template=T.GEMMA4,
        template_source="google/gemma-4-e2b-it as stored in llama.cpp models/templates/gemma4.jinja "
        "(tool-declaration macros left out)",
        image_token="<|image|>",
        generation={**TOKENIZER_IDS, "eos_token_id": [TokAttr("eos_token_id"), Tok("<turn|>")]},
        family_generation={"do_sample": True, "top_k": 64, "top_p": 0.95, "temperature": 1.0},
        generation_source="Gemma 4 model card's recommended sampling (temperature 1.0, top_p 0.95, top_k 64)",
        requires=("torchvision",),
        approximations="at most 70 soft tokens per image (the smallest budget Gemma 4 supports; 280 "
        "default) from 4 px patches; no audio tower; boi/eoi token strings follow the template's "
        "<|x> / <x|> naming.",
    ),
    FamilySpec(
        model_type="paligemma",
        imitates="google/paligemma2-3b-mix-224",
        model_class="PaliGemmaForConditionalGeneration",
        tokenizer=gemma_tokenizer(named={"image_token": "<image>"}, extra=()),
        processor=C(
            "PaliGemmaProcessor",
            {
                "image_processor": C(
                    "SiglipImageProcessorPil", {"size": {"height": 28, "width": 28}, "image_seq_length": 4}
                ),
                "tokenizer": TOKENIZER,
            },
        ),
        config=C(
            "PaliGemmaConfig",
            {
                # SigLIP on 28 px with 14 px patches: 4 image tokens (256 real at 224 px)
                "vision_config": C("SiglipVisionConfig", vision(image_size=28, patch_size=14)),
                "text_config": {
                    "model_type": "gemma2",
                    **lm(
                        query_pre_attn_scalar=LM_HEAD_DIM,
                        layer_types=["sliding_attention", "full_attention"],
                        sliding_window=512,
                    ),
                },
                "image_token_index": Tok("<image>"),
                "projection_dim": LM_HIDDEN,
                "hidden_size": LM_HIDDEN,
            },
        ),
        chat_template=T.PALIGEMMA,
        template_source="written to PaliGemma's documented prompt format (it ships no chat template)",
        image_token="<image>",
        approximations="28 px images, 4 image tokens; Gemma 2 decoder; the prompt is a prefix "
        "(bidirectional attention over it, causal over the answer).",
    ),
)
