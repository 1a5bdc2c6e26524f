"""LLaVA lineage: a vision tower, a projector and a decoder that reads image features in place of
placeholder tokens (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, InternVL, Mistral 3, Aya Vision).

Example:
    >>> from vlmshield.testing.families.llava import SPECS
    >>> SPECS[0].model_type
    'llava'
"""

from __future__ import annotations

from vlmshield.testing import chat_templates as T
from vlmshield.testing._spec import (
    DROP,
    TOKENIZER,
    VIS_HIDDEN,
    C,
    FamilySpec,
    Tok,
    TokenizerSpec,
    llama_tokenizer,
    lm,
    vision,
)
from vlmshield.testing.families.qwen import QWEN_GENERATION, qwen_tokenizer

# 28 px images, 14 px patches: 4 patches (+ CLS, dropped by the "default" feature strategy).
_CLIP = C("CLIPVisionConfig", vision(image_size=28, patch_size=14, projection_dim=VIS_HIDDEN))
_CLIP_PIL = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}
_LLAVA_PROCESSOR = {
    "tokenizer": TOKENIZER,
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
}
_LLAVA_CONFIG = {
    "vision_config": _CLIP,
    "image_token_index": Tok("<image>"),
    "image_seq_length": 4,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
}
_PINPOINTS = [[28, 56], [56, 28], [56, 56]]
# Qwen2 decoder as a ``text_config`` dict (the configs build it through AutoConfig).
_QWEN2_TEXT = {"model_type": "qwen2", **lm(head_dim=DROP)}
_SQUARE_28 = {"size": {"height": 28, "width": 28}}
_MISTRAL_SPECIALS = (
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
)
_COHERE_SPECIALS = (
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<image>",
    "<|START_OF_IMG|>",
    "<|END_OF_IMG|>",
    "<|IMG_PATCH|>",
    "<|IMG_LINE_BREAK|>",
    "TILE",
    "TILE_GLOBAL",
)

SPECS = (
    FamilySpec(
        model_type="llava",
        imitates="llava-hf/llava-1.5-7b-hf",
        model_class="LlavaForConditionalGeneration",
        tokenizer=llama_tokenizer(named={"image_token": "<image>"}),
        processor=C(
            "LlavaProcessor", {"image_processor": C("CLIPImageProcessorPil", _CLIP_PIL), **_LLAVA_PROCESSOR}
        ),
        config=C("LlavaConfig", {"text_config": C("LlamaConfig", lm()), **_LLAVA_CONFIG}),
        chat_template=T.LLAVA_1_5,
        template_source="llava-hf/llava-1.5-7b-hf",
        image_token="<image>",
        approximations="28 px images (336 px real), 4 image tokens (576 real).",
    ),
    FamilySpec(
        model_type="llava_next",
        imitates="llava-hf/llava-v1.6-mistral-7b-hf",
        model_class="LlavaNextForConditionalGeneration",
        tokenizer=llama_tokenizer(named={"image_token": "<image>"}),
        processor=C(
            "LlavaNextProcessor",
            {
                "image_processor": C(
                    "LlavaNextImageProcessorPil", {**_CLIP_PIL, "image_grid_pinpoints": _PINPOINTS}
                ),
                **_LLAVA_PROCESSOR,
            },
        ),
        config=C(
            "LlavaNextConfig",
            {
                "text_config": C("MistralConfig", lm(sliding_window=None)),
                "image_grid_pinpoints": _PINPOINTS,
                **_LLAVA_CONFIG,
            },
        ),
        chat_template=T.LLAVA_NEXT_MISTRAL,
        template_source="llava-hf/llava-v1.6-mistral-7b-hf",
        image_token="<image>",
        approximations='"anyres" tiles of 28 px, grid pinpoints up to 56 x 56 px: 10 to 24 image tokens.',
    ),
    FamilySpec(
        model_type="llava_onevision",
        imitates="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        model_class="LlavaOnevisionForConditionalGeneration",
        tokenizer=qwen_tokenizer(extra=("<image>", "<video>")),
        processor=C(
            "LlavaOnevisionProcessor",
            {
                "image_processor": C(
                    "LlavaOnevisionImageProcessorPil",
                    {**_SQUARE_28, "image_grid_pinpoints": [[28, 28], *_PINPOINTS]},
                ),
                "tokenizer": TOKENIZER,
                "video_processor": C("LlavaOnevisionVideoProcessor", _SQUARE_28),
                "num_image_tokens": 4,
                "vision_feature_select_strategy": "full",
            },
        ),
        config=C(
            "LlavaOnevisionConfig",
            {
                "vision_config": C("SiglipVisionConfig", vision(image_size=28, patch_size=14)),
                "text_config": _QWEN2_TEXT,
                "image_token_index": Tok("<image>"),
                "video_token_index": Tok("<video>"),
                "vision_feature_select_strategy": "full",
                "vision_feature_layer": -1,
                "image_grid_pinpoints": [[28, 28], *_PINPOINTS],
            },
        ),
        chat_template=T.LLAVA_ONEVISION,
        template_source="llava-hf/llava-onevision-qwen2-0.5b-ov-hf (as quoted by transformers' tests)",
        image_token="<image>",
        generation=QWEN_GENERATION,
        requires=("torchvision",),
        approximations='SigLIP on 28 px tiles, "anyres_max_9" grid pinpoints up to 56 x 56 px.',
    ),
    FamilySpec(
        model_type="internvl",
        imitates="OpenGVLab/InternVL3-1B-hf",
        model_class="InternVLForConditionalGeneration",
        tokenizer=qwen_tokenizer(
            extra=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
            named={
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
        ),
        processor=C(
            "InternVLProcessor",
            {
                "image_processor": C(
                    "GotOcr2ImageProcessorPil", {**_SQUARE_28, "crop_to_patches": False, "max_patches": 1}
                ),
                "tokenizer": TOKENIZER,
                "video_processor": C("InternVLVideoProcessor", _SQUARE_28),
                "image_seq_length": 4,
            },
        ),
        config=C(
            "InternVLConfig",
            {
                # InternViT on 28 px with 7 px patches: 16 patches, pixel-shuffled (ratio 0.5) to 4 tokens
                "vision_config": C("InternVLVisionConfig", vision(image_size=[28, 28], patch_size=[7, 7])),
                "text_config": _QWEN2_TEXT,
                "image_token_id": Tok("<IMG_CONTEXT>"),
                "image_seq_length": 4,
                "downsample_ratio": 0.5,
                # untied, unlike InternVL3-1B: a tied random model echoes the prompt's last "\n"
                "tie_word_embeddings": False,
            },
        ),
        chat_template=T.INTERNVL,
        template_source="OpenGVLab/InternVL3-*-hf (written by transformers' InternVL conversion script)",
        image_token="<IMG_CONTEXT>",
        generation=QWEN_GENERATION,
        requires=("torchvision",),
        approximations="one 28 px tile per image (no dynamic tiling), 4 image tokens (256 per tile real); "
        "untied output embeddings.",
    ),
    FamilySpec(
        model_type="mistral3",
        imitates="mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        model_class="Mistral3ForConditionalGeneration",
        tokenizer=llama_tokenizer(extra=_MISTRAL_SPECIALS),
        processor=C(
            "PixtralProcessor",
            {
                "image_processor": C(
                    "PixtralImageProcessorPil",
                    {"size": {"longest_edge": 56}, "patch_size": {"height": 14, "width": 14}},
                ),
                "tokenizer": TOKENIZER,
                "patch_size": 14,
                "spatial_merge_size": 2,
            },
        ),
        config=C(
            "Mistral3Config",
            {
                "vision_config": C("PixtralVisionConfig", vision(image_size=56, patch_size=14, head_dim=16)),
                "text_config": C("MistralConfig", lm(sliding_window=None)),
                "image_token_index": Tok("[IMG]"),
                "spatial_merge_size": 2,
                "vision_feature_layer": -1,
            },
        ),
        chat_template=T.MISTRAL_SMALL_3_1,
        template_source="mistralai/Mistral-Small-3.1-24B-Instruct-2503 (as stored in llama.cpp)",
        image_token="[IMG]",
        requires=("torchvision",),
        approximations="Pixtral on at most 56 px, 14 px patches merged 2 x 2: up to 4 [IMG] tokens plus "
        "[IMG_BREAK] / [IMG_END]; a Llama-style SentencePiece BPE stands in for the Tekken tokenizer.",
    ),
    FamilySpec(
        model_type="aya_vision",
        imitates="CohereLabs/aya-vision-8b",
        model_class="AyaVisionForConditionalGeneration",
        tokenizer=TokenizerSpec(
            cls="CohereTokenizer",
            style="bytelevel",
            leading=("<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>"),
            extra=_COHERE_SPECIALS,
        ),
        processor=C(
            "AyaVisionProcessor",
            {
                "image_processor": C(
                    "GotOcr2ImageProcessorPil", {**_SQUARE_28, "crop_to_patches": False, "max_patches": 1}
                ),
                "tokenizer": TOKENIZER,
                "patch_size": 7,
                "img_size": 28,
                "downsample_factor": 2,
            },
        ),
        config=C(
            "AyaVisionConfig",
            {
                # SigLIP on 28 px with 7 px patches: 16 patches, pixel-shuffled by 2 to 4 tokens
                "vision_config": C("SiglipVisionConfig", vision(image_size=28, patch_size=7)),
                "text_config": C(
                    "Cohere2Config",
                    lm(
                        head_dim=DROP, layer_types=["sliding_attention", "full_attention"], sliding_window=512
                    ),
                ),
                "image_token_index": Tok("<|IMG_PATCH|>"),
                "downsample_factor": 2,
                "vision_feature_select_strategy": "full",
                "vision_feature_layer": -1,
            },
        ),
        chat_template=T.AYA_VISION,
        template_source="written to the documented Command R / Aya turn format (the published "
        "template was not available offline)",
        image_token="<|IMG_PATCH|>",
        approximations="one 28 px global tile (no crops), 4 <|IMG_PATCH|> tokens; TILE / TILE_GLOBAL "
        "are special tokens here.",
    ),
)
