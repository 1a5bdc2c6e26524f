"""Random-weight VLMs at real sizes, for speed and memory measurements (never for quality).

Speed does not depend on weight values, so a published architecture with random weights costs what
the real checkpoint costs, as long as the number of new tokens is forced (no early EOS). The
tokenizer, processor and chat template are those of the family's tiny checkpoint
(``vlmshield.testing.tiny_checkpoint``); the model sizes and the image resolution are the published
ones, so prompts carry as many image tokens as with the real model.

Sizes (quoted from each checkpoint's ``config.json`` / ``preprocessor_config.json``):

- ``7b``: llava-hf/llava-1.5-7b-hf: Llama text model, hidden 4096, intermediate 11008, 32 layers,
  32 heads (32 key/value heads), vocabulary 32064, 4096 positions; CLIP ViT-L/14 at 336 px (hidden
  1024, intermediate 4096, 24 layers, 16 heads), feature layer -2, 576 image tokens.
- ``qwen7b``: Qwen/Qwen2.5-VL-7B-Instruct: hidden 3584, intermediate 18944, 28 layers, 28 heads
  (4 key/value heads), vocabulary 152064, rope theta 1e6, mrope sections (16, 24, 24); vision depth
  32, hidden 1280, intermediate 3420, 16 heads, out hidden 3584, patch 14, spatial merge 2, window
  112, full attention at blocks 7, 15, 23, 31. Images resized to 448 x 448 here (256 image tokens).
- ``0.5b`` (for CPUs): the LLaVA-1.5 architecture with the language model of Qwen2-0.5B (as in
  llava-onevision-qwen2-0.5b: hidden 896, intermediate 4864, 24 layers, 14 heads, 2 key/value
  heads, vocabulary 151936, tied embeddings) and a CLIP ViT-B/16 tower at 224 px (hidden 768,
  intermediate 3072, 12 layers, 12 heads; 196 image tokens). About 0.58B parameters. This pairing
  is ours: no published checkpoint has exactly this shape.

The 0.5b model is saved once under ``$VLMSHIELD_CACHE/realsize/`` (float32, about 2.3 GB) and
loaded through ``load_vlm`` like any checkpoint; the 7B ones are built directly on the target device
(writing and reading 14 GB costs more than initialising them).

Example:
    >>> vlm = realsize_vlm("0.5b", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vlmshield.models import VLM, load_vlm
from vlmshield.testing import tiny_checkpoint

SIZES = ("0.5b", "7b", "qwen7b")


def _cache() -> Path:
    base = os.environ.get("VLMSHIELD_CACHE") or Path.home() / ".cache" / "vlmshield"
    return Path(base).expanduser() / "realsize"


def _llava_config(
    text: dict[str, Any], vision: dict[str, Any], image_size: int, patch: int, tiny: Any
) -> Any:
    from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig

    text_type = text.pop("model_type")
    text_config = AutoConfig.for_model(text_type, **text)
    return LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch, **vision),
        text_config=text_config,
        image_token_index=tiny.image_token_index,
        image_seq_length=(image_size // patch) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _llava_processor(path: Path, image_size: int, patch: int) -> Any:
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    proc.image_processor.size = {"shortest_edge": image_size}
    proc.image_processor.crop_size = {"height": image_size, "width": image_size}
    proc.patch_size = patch
    return proc


def _ids(tok: Any) -> dict[str, Any]:
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _build_llava(size: str) -> tuple[Any, Any]:
    from transformers import AutoConfig

    tiny_path = tiny_checkpoint("llava")
    tiny = AutoConfig.from_pretrained(tiny_path)
    if size == "7b":
        image_size, patch = 336, 14
        text = dict(
            model_type="llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        )
        vision = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            projection_dim=768,
        )
    else:
        image_size, patch = 224, 16
        text = dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
        )
        vision = dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=512,
        )
    processor = _llava_processor(tiny_path, image_size, patch)
    text.update(_ids(processor.tokenizer))
    return _llava_config(text, vision, image_size, patch, tiny), processor


def _build_qwen7b() -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLConfig

    tiny_path = tiny_checkpoint("qwen2_5_vl")
    tiny = AutoConfig.from_pretrained(tiny_path)
    processor = AutoProcessor.from_pretrained(tiny_path)
    pixels = 448 * 448
    processor.image_processor.min_pixels = processor.image_processor.max_pixels = pixels
    processor.image_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}
    tt = tiny.get_text_config()
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            bos_token_id=tt.bos_token_id,
            eos_token_id=tt.eos_token_id,
            pad_token_id=tt.pad_token_id,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
        image_token_id=tiny.image_token_id,
        video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
        vision_end_token_id=tiny.vision_end_token_id,
    )
    return config, processor


def _instantiate(config: Any, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForImageTextToText

    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval()


def realsize_vlm(size: str, *, device: str = "cpu", dtype: str = "float32") -> VLM:
    """A random-weight VLM of ``size`` (``0.5b``, ``7b`` or ``qwen7b``) behind vlmshield's adapter."""
    if size not in SIZES:
        raise SystemExit(f"error: unknown size {size!r}; use one of {', '.join(SIZES)}")
    torch_dtype = getattr(torch, dtype)
    if size == "0.5b":
        final = _cache() / f"llava-qwen2-0.5b-{dtype}"
        if not (final / "model.safetensors").is_file() and not any(final.glob("model-*.safetensors")):
            config, processor = _build_llava(size)
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            torch.manual_seed(0)
            model = _instantiate(config, "cpu", torch_dtype)
            model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        return load_vlm(str(final), device=device, dtype=dtype)
    from vlmshield.models.families import family_info

    config, processor = _build_llava(size) if size == "7b" else _build_qwen7b()
    torch.manual_seed(0)
    model = _instantiate(config, device, torch_dtype)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return VLM(model, processor, name=f"random-{size}", family=family_info(str(config.model_type)))
