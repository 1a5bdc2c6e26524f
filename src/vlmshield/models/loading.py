"""``load_vlm``: a hub id, a local checkpoint directory or ``"demo"`` -> a :class:`VLM`.

Example:
    >>> from vlmshield import load_vlm
    >>> vlm = load_vlm("Qwen/Qwen2-VL-2B-Instruct", device="cuda", dtype="bfloat16")  # doctest: +SKIP
    >>> vlm = load_vlm("checkpoints/tiny-llava")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from vlmshield.errors import ModelLoadError
from vlmshield.models.adapter import VLM
from vlmshield.models.families import FAMILIES, family_info

DEMO_NAMES = ("demo",)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``None``/``"auto"`` -> bf16 (or fp16) on GPU, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or auto") from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_local(name: str) -> bool:
    """True unless ``name`` has the shape of a hub id (``org/name``)."""
    return not _HUB_ID.match(name) or name.startswith((".", "~"))


def _read_model_type(path: Path) -> str:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(
            f"{path} is not a model checkpoint (no config.json); pass a checkpoint directory, a hub id, "
            "or build one with `vlmshield tiny build --family llava --out DIR`"
        )
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg} is not valid JSON ({e}); the checkpoint is damaged") from None
    if not model_type:
        raise ModelLoadError(f"{cfg} has no model_type; the checkpoint is damaged")
    return str(model_type)


def _check_supported(model_type: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelLoadError(
            f"unsupported architecture {model_type!r}: not an image-text-to-text model; "
            f"supported families: {', '.join(FAMILIES)}"
        )


def load_vlm(
    name_or_path: str,
    *,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | None = None,
    revision: str | None = None,
    layers_path: str | None = None,
    max_images: int | None = None,
    trust_remote_code: bool = False,
) -> VLM:
    """Load a vision-language model and its processor behind the :class:`VLM` adapter.

    Args:
        name_or_path: a local checkpoint directory, a hub id (honours ``HF_HUB_OFFLINE``), or ``"demo"``.
        device: ``"auto"`` (GPU if any), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... Ignored with ``device_map``.
        dtype: ``"auto"`` (bf16/fp16 on GPU, fp32 on CPU) or a dtype name.
        device_map: e.g. ``"auto"`` to shard a model larger than one GPU (needs accelerate).
        max_memory: with ``device_map``, the most each device may hold (``{0: "20GiB", "cpu": "64GiB"}``);
            devices left out are not used.
        offload_folder: with ``device_map``, where weights placed on ``"disk"`` go.
        revision: hub revision (branch, tag or commit).
        layers_path: attribute path of the language model's decoder layers, for architectures the
            family table does not know (e.g. ``"model.language_model.layers"``).
        max_images: override the family's per-prompt image limit.

    Example:
        >>> vlm = load_vlm("llava-hf/llava-1.5-7b-hf", device_map="auto")  # doctest: +SKIP
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if name_or_path in DEMO_NAMES:
        from vlmshield.demo import demo_checkpoint

        source: str | Path = demo_checkpoint()
    else:
        source = Path(name_or_path).expanduser()
        if not source.exists():
            if _looks_local(name_or_path):
                raise ModelLoadError(
                    f"model path not found: {name_or_path} (check the path or pass a hub id)"
                )
            source = name_or_path  # a hub id
    if isinstance(source, Path):
        if not source.is_dir():
            raise ModelLoadError(f"{source} is a file, not a checkpoint directory")
        model_type = _read_model_type(source)
        _check_supported(model_type)

    dev = resolve_device(device)
    sharded_on = "cuda" if torch.cuda.is_available() else "cpu"  # a device map without GPUs stays on CPU
    torch_dtype = resolve_dtype(dtype, dev if device_map is None else sharded_on)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    placement: dict[str, Any] = {}
    if device_map is not None and max_memory is not None:
        placement["max_memory"] = max_memory
    if device_map is not None and offload_folder is not None:
        placement["offload_folder"] = offload_folder
    try:
        if not isinstance(source, Path):
            from transformers import AutoConfig

            model_type = str(AutoConfig.from_pretrained(source, **kwargs).model_type)
        backend = family_info(model_type).image_backend
        processor = AutoProcessor.from_pretrained(
            str(source), **kwargs, **({"backend": backend} if backend else {})
        )
        model = AutoModelForImageTextToText.from_pretrained(
            str(source), dtype=torch_dtype, device_map=device_map, **placement, **kwargs
        )
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(f"could not load {name_or_path}{offline}: {first}") from None
    if device_map is None:
        model = model.to(dev)  # type: ignore[arg-type]
    model.eval()
    model_type = str(model.config.model_type)
    _check_supported(model_type)
    return VLM(
        model,
        processor,
        name=str(name_or_path),
        family=family_info(model_type),
        layers_path=layers_path,
        max_images=max_images,
    )
