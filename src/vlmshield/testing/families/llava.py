"""LLaVA lineage: LLaVA-1.5 and LLaVA-NeXT (CLIP tower, Llama / Mistral decoder).

Example:
    >>> from vlmshield.testing.families.llava import SPECS
    >>> SPECS[0].model_type
    'llava'
"""

from __future__ import annotations

from vlmshield.testing import chat_templates as T
from vlmshield.testing._spec import TOKENIZER, VIS_HIDDEN, C, FamilySpec, Tok, llama_tokenizer, lm, vision

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
)
