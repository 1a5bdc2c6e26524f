"""Meta's vision models: Llama 4 (early-fusion MoE decoder) and Llama 3.2 Vision (Mllama: a Llama
decoder with cross-attention layers that read the image).

Example:
    >>> from vlmshield.testing.families.meta import SPECS
    >>> [s.model_type for s in SPECS]
    ['llama4', 'mllama']
"""

from __future__ import annotations

from vlmshield.testing import chat_templates as T
from vlmshield.testing._spec import (
    TOKENIZER,
    TOKENIZER_IDS,
    VIS_HIDDEN,
    C,
    FamilySpec,
    Tok,
    TokAttr,
    TokenizerSpec,
    lm,
    vision,
)


def _llama3_style_tokenizer(eos: str, pad: str, extra: tuple[str, ...]) -> TokenizerSpec:
    """Byte-level BPE with Llama 3 / 4 style special tokens; the chat template writes ``bos_token``."""
    return TokenizerSpec(
        cls="GPT2Tokenizer",
        style="bytelevel",
        leading=("<|begin_of_text|>", "<|end_of_text|>"),
        extra=extra,
        kwargs={"unk_token": None, "bos_token": "<|begin_of_text|>", "eos_token": eos, "pad_token": pad},
    )


_LLAMA4_SPECIALS = (
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|finetune_right_pad|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
)
_MLLAMA_SPECIALS = (
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
    "<|image|>",
)
# Llama 3 / 4 Instruct checkpoints' sampling settings.
_LLAMA_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}

SPECS = (
    FamilySpec(
        model_type="llama4",
        imitates="meta-llama/Llama-4-Scout-17B-16E-Instruct",
        model_class="Llama4ForConditionalGeneration",
        tokenizer=_llama3_style_tokenizer("<|eot|>", "<|finetune_right_pad|>", _LLAMA4_SPECIALS),
        processor=C(
            "Llama4Processor",
            {
                # one 56 px tile per image (no tiling): 16 patches of 14 px, pixel-shuffled to 4 tokens
                "image_processor": C(
                    "Llama4ImageProcessor", {"size": {"height": 56, "width": 56}, "max_patches": 1}
                ),
                "tokenizer": TOKENIZER,
                "patch_size": 14,
                "pixel_shuffle_ratio": 0.5,
            },
        ),
        config=C(
            "Llama4Config",
            {
                "vision_config": C(
                    "Llama4VisionConfig",
                    vision(
                        image_size=56,
                        patch_size=14,
                        # pixel shuffle by 0.5 stacks 4 patches: the adapter MLP reads 4 x hidden
                        intermediate_size=4 * VIS_HIDDEN,
                        vision_output_dim=64,
                        projector_input_dim=64,
                        projector_output_dim=64,
                        pixel_shuffle_ratio=0.5,
                    ),
                ),
                # every layer a mixture of 2 experts, 1 per token, plus the shared expert (16 real)
                "text_config": C(
                    "Llama4TextConfig",
                    lm(
                        intermediate_size=32,
                        intermediate_size_mlp=128,
                        num_local_experts=2,
                        num_experts_per_tok=1,
                        interleave_moe_layer_step=1,
                    ),
                ),
                "boi_token_index": Tok("<|image_start|>"),
                "eoi_token_index": Tok("<|image_end|>"),
                "image_token_index": Tok("<|patch|>"),
            },
        ),
        chat_template=T.LLAMA4,
        template_source="meta-llama/Llama-4-Scout-17B-16E-Instruct (transformers' Llama4Processor default)",
        image_token="<|patch|>",
        generation={
            **TOKENIZER_IDS,
            "eos_token_id": [Tok("<|end_of_text|>"), Tok("<|eom|>"), TokAttr("eos_token_id")],
        },
        family_generation=_LLAMA_SAMPLING,
        generation_source="meta-llama/Llama-4-Scout-17B-16E-Instruct generation_config.json",
        layer_lists=("no_rope_layers",),
        layer_index_lists=("moe_layers",),
        requires=("torchvision",),
        approximations="one 56 px tile per image, 4 <|patch|> tokens (144 per tile real); 2 experts (16); "
        "GPT-2 style byte-level BPE with Llama 4's special tokens.",
    ),
    FamilySpec(
        model_type="mllama",
        imitates="meta-llama/Llama-3.2-11B-Vision-Instruct",
        model_class="MllamaForConditionalGeneration",
        tokenizer=_llama3_style_tokenizer("<|eot_id|>", "<|finetune_right_pad_id|>", _MLLAMA_SPECIALS),
        processor=C(
            "MllamaProcessor",
            {
                "image_processor": C(
                    "MllamaImageProcessorPil", {"size": {"height": 28, "width": 28}, "max_image_tiles": 1}
                ),
                "tokenizer": TOKENIZER,
            },
        ),
        config=C(
            "MllamaConfig",
            {
                "vision_config": C(
                    "MllamaVisionConfig",
                    {
                        **vision(image_size=28, patch_size=14, num_global_layers=1),
                        "attention_heads": 2,
                        "intermediate_layers_indices": [0],
                        "max_num_tiles": 1,
                        "supported_aspect_ratios": [[1, 1]],
                        # the last layer's output and one intermediate layer's, concatenated
                        "vision_output_dim": 2 * VIS_HIDDEN,
                    },
                ),
                # 2 self-attention layers and 1 cross-attention layer between them (every 5th real)
                "text_config": C(
                    "MllamaTextConfig",
                    lm(head_dim=None, num_hidden_layers=3, cross_attention_layers=[1]),
                ),
                "image_token_index": Tok("<|image|>"),
            },
        ),
        chat_template=T.MLLAMA,
        template_source="the Llama 3 header format as transformers' Mllama tests write it (the published "
        "template's date preamble and tool branches left out: not available offline)",
        image_token="<|image|>",
        generation={
            **TOKENIZER_IDS,
            "eos_token_id": [Tok("<|end_of_text|>"), Tok("<|eom_id|>"), TokAttr("eos_token_id")],
        },
        family_generation=_LLAMA_SAMPLING,
        generation_source="meta-llama/Llama-3.2-11B-Vision-Instruct generation_config.json",
        layer_index_lists=("cross_attention_layers",),
        # tanh(0.5) of the cross-attention and its MLP pass into the residual stream (0 at init)
        init={"cross_attn_attn_gate": 0.5, "cross_attn_mlp_gate": 0.5},
        approximations="one 28 px tile per image (4 real); 3 decoder layers of which 1 cross-attention; "
        "GPT-2 style byte-level BPE with Llama 3's special tokens.",
    ),
)
