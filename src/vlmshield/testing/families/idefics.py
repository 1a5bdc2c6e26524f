"""Idefics lineage: Idefics2 (perceiver resampler, Mistral decoder), Idefics3 and SmolVLM (SigLIP-like
tower, pixel shuffle, Llama decoder).

Example:
    >>> from vlmshield.testing.families.idefics import SPECS
    >>> sorted(s.model_type for s in SPECS)[:2]
    ['idefics3', 'smolvlm']
"""

from __future__ import annotations

from vlmshield.testing import chat_templates as T
from vlmshield.testing._spec import (
    LM_HIDDEN,
    TOKENIZER,
    C,
    FamilySpec,
    Tok,
    TokAttr,
    TokenizerSpec,
    llama_tokenizer,
    lm,
    vision,
)

# SigLIP-like tower on 32 px images with 8 px patches: 16 patches, pixel-shuffled by 2 -> 4 tokens.
_IMAGE, _PATCH, _SCALE = 32, 8, 2
_SEQ = (_IMAGE // _PATCH) ** 2 // _SCALE**2
IDEFICS_SPECIALS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
)
# One global image per input image (no splitting into tiles), as small as the tower's input.
_IMAGE_KWARGS = {
    "do_image_splitting": False,
    "size": {"longest_edge": _IMAGE},
    "max_image_size": {"longest_edge": _IMAGE},
}
_VISION = vision(image_size=_IMAGE, patch_size=_PATCH)


def gpt2_tokenizer(bos: str, eos: str, pad: str, unk: str, extra: tuple[str, ...]) -> TokenizerSpec:
    """GPT-2 style byte-level BPE (``unk`` takes id 0)."""
    return TokenizerSpec(
        cls="GPT2Tokenizer",
        style="bytelevel",
        leading=(unk,),
        extra=extra,
        kwargs={"unk_token": unk, "bos_token": bos, "eos_token": eos, "pad_token": pad},
    )


def _config(cls: str) -> C:
    return C(
        cls,
        {
            "vision_config": _VISION,
            "text_config": C("LlamaConfig", lm()),
            "image_token_id": Tok("<image>"),
            "scale_factor": _SCALE,
            # The top-level default (128002) is not in this vocabulary.
            "pad_token_id": TokAttr("pad_token_id"),
        },
    )


SPECS = (
    FamilySpec(
        model_type="idefics3",
        imitates="HuggingFaceM4/Idefics3-8B-Llama3",
        model_class="Idefics3ForConditionalGeneration",
        tokenizer=gpt2_tokenizer(
            bos="<|begin_of_text|>",
            eos="<end_of_utterance>",
            pad="<|reserved_special_token_0|>",
            unk="<|end_of_text|>",
            extra=IDEFICS_SPECIALS,
        ),
        processor=C(
            "Idefics3Processor",
            {
                "image_processor": C("Idefics3ImageProcessorPil", _IMAGE_KWARGS),
                "tokenizer": TOKENIZER,
                "image_seq_len": _SEQ,
            },
        ),
        config=_config("Idefics3Config"),
        chat_template=T.IDEFICS3,
        template_source="HuggingFaceM4/Idefics3-8B-Llama3",
        image_token="<image>",
        approximations="one 32 px global image per image (no tiles), 4 image tokens; GPT-2 style tokenizer "
        "class with Llama 3's special tokens.",
    ),
    FamilySpec(
        model_type="smolvlm",
        imitates="HuggingFaceTB/SmolVLM-256M-Instruct",
        model_class="SmolVLMForConditionalGeneration",
        tokenizer=gpt2_tokenizer(
            bos="<|im_start|>",
            eos="<end_of_utterance>",
            pad="<|im_end|>",
            unk="<|endoftext|>",
            extra=(*IDEFICS_SPECIALS, "<video>"),
        ),
        processor=C(
            "SmolVLMProcessor",
            {
                "image_processor": C("SmolVLMImageProcessorPil", _IMAGE_KWARGS),
                "tokenizer": TOKENIZER,
                "video_processor": C("SmolVLMVideoProcessor", _IMAGE_KWARGS),
                "image_seq_len": _SEQ,
            },
        ),
        config=_config("SmolVLMConfig"),
        chat_template=T.SMOLVLM,
        template_source="HuggingFaceTB/SmolVLM-256M-Instruct",
        image_token="<image>",
        requires=("torchvision", "num2words"),
        approximations="as Idefics3, with the SmolLM2 tokenizer's special tokens.",
    ),
    FamilySpec(
        model_type="idefics2",
        imitates="HuggingFaceM4/idefics2-8b",
        model_class="Idefics2ForConditionalGeneration",
        tokenizer=llama_tokenizer(extra=("<fake_token_around_image>", "<image>", "<end_of_utterance>")),
        processor=C(
            "Idefics2Processor",
            {
                "image_processor": C(
                    "Idefics2ImageProcessorPil",
                    {"do_image_splitting": False, "size": {"shortest_edge": _IMAGE, "longest_edge": _IMAGE}},
                ),
                "tokenizer": TOKENIZER,
                "image_seq_len": 4,
            },
        ),
        config=C(
            "Idefics2Config",
            {
                "vision_config": _VISION,
                # the perceiver resamples every image to 4 latents (64 real) in the decoder's width
                "perceiver_config": {
                    "hidden_size": LM_HIDDEN,
                    "resampler_n_latents": 4,
                    "resampler_depth": 1,
                    "resampler_n_heads": 2,
                    "resampler_head_dim": 16,
                    "num_key_value_heads": 1,
                },
                "text_config": {"model_type": "mistral", **lm(sliding_window=None)},
                "image_token_id": Tok("<image>"),
                "pad_token_id": TokAttr("pad_token_id"),
            },
        ),
        chat_template=T.IDEFICS2,
        template_source="HuggingFaceM4/idefics2-8b",
        image_token="<image>",
        approximations="one 32 px image (no splitting), a 1-layer perceiver with 4 latents (3 layers, "
        "64 latents real).",
    ),
)
