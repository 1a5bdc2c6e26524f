"""Other lineages: GLM-4.1V (Zhipu), LFM2-VL (Liquid AI) and Command A Vision (Cohere).

Example:
    >>> from vlmshield.testing.families.others import SPECS
    >>> SPECS[0].model_type
    'glm4v'
"""

from __future__ import annotations

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
    vision,
)
from vlmshield.testing.families.qwen import qwen_pixels

_GLM_SPECIALS = (
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
    "<think>",
    "</think>",
)
_GLM_PIXELS = qwen_pixels(14, 56 * 56)
_COHERE_LEADING = ("<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>")
_COMMAND_A_SPECIALS = (
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
)
_LFM2_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<|image_start|>",
    "<|image_end|>",
    "<|img_thumbnail|>",
)

SPECS = (
    FamilySpec(
        model_type="glm4v",
        imitates="zai-org/GLM-4.1V-9B-Thinking",
        model_class="Glm4vForConditionalGeneration",
        tokenizer=TokenizerSpec(
            cls="GPT2Tokenizer",
            style="bytelevel",
            leading=("<|endoftext|>",),
            extra=_GLM_SPECIALS,
            kwargs={
                "unk_token": None,
                "bos_token": None,
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
        ),
        processor=C(
            "Glm4vProcessor",
            {
                "image_processor": C("Glm4vImageProcessorPil", _GLM_PIXELS),
                "tokenizer": TOKENIZER,
                "video_processor": C("Glm4vVideoProcessor", _GLM_PIXELS),
            },
        ),
        config=C(
            "Glm4vConfig",
            {
                # half of head_dim rotates (4 frequencies), split 2/1/1 by M-RoPE ([8, 12, 12] real)
                "text_config": lm(
                    head_dim=DROP,
                    rope_parameters={
                        "rope_type": "default",
                        "rope_theta": 10000.0,
                        "mrope_section": [2, 1, 1],
                        "partial_rotary_factor": 0.5,
                    },
                ),
                "vision_config": {
                    "depth": VIS_LAYERS,
                    "hidden_size": VIS_HIDDEN,
                    "intermediate_size": VIS_INTERMEDIATE,
                    "num_heads": VIS_HEADS,
                    "out_hidden_size": LM_HIDDEN,
                    "image_size": 56,
                    "patch_size": 14,
                    "spatial_merge_size": 2,
                    "temporal_patch_size": 2,
                },
                "image_token_id": Tok("<|image|>"),
                "video_token_id": Tok("<|video|>"),
                "image_start_token_id": Tok("<|begin_of_image|>"),
                "image_end_token_id": Tok("<|end_of_image|>"),
                "video_start_token_id": Tok("<|begin_of_video|>"),
                "video_end_token_id": Tok("<|end_of_video|>"),
            },
        ),
        chat_template=T.GLM4V,
        template_source="written to GLM-4.1V's documented prompt format (the published template was not "
        "available offline)",
        image_token="<|image|>",
        generation={
            "eos_token_id": [Tok("<|endoftext|>"), Tok("<|user|>"), Tok("<|observation|>")],
            "pad_token_id": Tok("<|endoftext|>"),
        },
        requires=("torchvision",),
        approximations="about 56 x 56 px per image (4 tokens when square); GPT-2 style byte-level BPE "
        "with GLM's special tokens; no thinking-mode switches in the template.",
    ),
    FamilySpec(
        model_type="lfm2_vl",
        imitates="LiquidAI/LFM2-VL-450M",
        model_class="Lfm2VlForConditionalGeneration",
        tokenizer=TokenizerSpec(
            cls="GPT2Tokenizer",
            style="bytelevel",
            leading=("<|pad|>", "<|startoftext|>", "<|endoftext|>"),
            extra=_LFM2_SPECIALS,
            kwargs={
                "unk_token": None,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|pad|>",
            },
        ),
        processor=C(
            "Lfm2VlProcessor",
            {
                # one thumbnail per image (no tiles): at most 16 patches of 8 px, pixel-unshuffled by 2
                "image_processor": C(
                    "Lfm2VlImageProcessor",
                    {
                        "do_image_splitting": False,
                        "encoder_patch_size": 8,
                        "downsample_factor": 2,
                        "min_image_tokens": 1,
                        "max_image_tokens": 4,
                        "tile_size": 32,
                        "size": {"height": 32, "width": 32},
                    },
                ),
                "tokenizer": TOKENIZER,
            },
        ),
        config=C(
            "Lfm2VlConfig",
            {
                "vision_config": {
                    "model_type": "siglip2_vision_model",
                    **vision(patch_size=8, num_patches=16),
                },
                # short-convolution and attention layers (10 conv + 6 attention real)
                "text_config": {
                    "model_type": "lfm2",
                    **lm(
                        head_dim=DROP,
                        layer_types=["conv", "full_attention"],
                        block_auto_adjust_ff_dim=False,
                    ),
                },
                "image_token_id": Tok("<image>"),
                "projector_hidden_size": 64,
                "downsample_factor": 2,
                # untied, unlike LFM2-VL: a tied random model echoes the prompt's last "\n"
                "tie_word_embeddings": False,
            },
        ),
        chat_template=T.LFM2_VL,
        template_source="written to LFM2-VL's documented ChatML format (the published template was not "
        "available offline)",
        image_token="<image>",
        requires=("torchvision",),
        approximations="one thumbnail of at most 32 px per image (no 512 px tiles), up to 4 image tokens; "
        "1 conv + 1 attention layer; untied output embeddings; GPT-2 style byte-level BPE with LFM2's "
        "special tokens.",
    ),
    FamilySpec(
        model_type="cohere2_vision",
        imitates="CohereLabs/command-a-vision-07-2025",
        model_class="Cohere2VisionForConditionalGeneration",
        tokenizer=TokenizerSpec(
            cls="CohereTokenizer",
            style="bytelevel",
            leading=_COHERE_LEADING,
            named={
                "boi_token": "<|START_OF_IMG|>",
                "eoi_token": "<|END_OF_IMG|>",
                "image_token": "<|IMG_PATCH|>",
                "img_line_break_token": "<|IMG_LINE_BREAK|>",
            },
            extra=_COMMAND_A_SPECIALS,
        ),
        processor=C(
            "Cohere2VisionProcessor",
            {
                # one 28 px tile per image; "patch_size" is tokens per tile side after the 2x2 shuffle
                "image_processor": C(
                    "Cohere2VisionImageProcessor",
                    {"size": {"height": 28, "width": 28}, "max_patches": 1, "patch_size": 2},
                ),
                "tokenizer": TOKENIZER,
            },
        ),
        config=C(
            "Cohere2VisionConfig",
            {
                "vision_config": {"model_type": "siglip_vision_model", **vision(image_size=28, patch_size=7)},
                "text_config": {
                    "model_type": "cohere2",
                    **lm(
                        head_dim=DROP, layer_types=["sliding_attention", "full_attention"], sliding_window=512
                    ),
                },
                "image_token_id": Tok("<|IMG_PATCH|>"),
                "downsample_factor": 2,
                "alignment_intermediate_size": 128,
            },
        ),
        chat_template=T.COMMAND_A_VISION,
        template_source="written to Command A Vision's documented turn format (the published template "
        "was not available offline)",
        image_token="<|IMG_PATCH|>",
        requires=("torchvision",),
        approximations="one 28 px tile per image (up to 12 of 512 px real), 4 <|IMG_PATCH|> tokens; "
        "2 Cohere 2 decoder layers (sliding + full).",
    ),
)
