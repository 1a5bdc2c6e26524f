"""Tiny random-weight checkpoints of every supported VLM family, built offline.

A tiny checkpoint is a directory saved with ``save_pretrained`` exactly like a real one (config,
generation config, ``model.safetensors``, tokenizer, processor, chat template), so tests go through
the same ``AutoProcessor`` / ``AutoModelForImageTextToText`` / ``generate`` code as real models:

    >>> from vlmshield.testing import tiny_checkpoint
    >>> path = tiny_checkpoint("llava")  # doctest: +SKIP
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> model = AutoModelForImageTextToText.from_pretrained(path)  # doctest: +SKIP
    >>> processor = AutoProcessor.from_pretrained(path)  # doctest: +SKIP

Nothing is downloaded: the tokenizer is a small BPE trained on an embedded English corpus, the
weights are random (deterministic from ``seed``) and the chat templates are those of named real
checkpoints. About 200k parameters; ``generate`` of a few tokens takes a fraction of a second on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from vlmshield.errors import UnknownNameError
from vlmshield.registry import suggest
from vlmshield.testing._spec import FamilySpec
from vlmshield.testing.families import SPECS

#: transformers ``model_type`` of every family that has a tiny checkpoint.
FAMILIES: tuple[str, ...] = tuple(SPECS)

#: The generation settings each family's real checkpoints ship in ``generation_config.json``, beyond
#: token ids (``generation="family"``), e.g. Qwen2-VL-7B-Instruct's ``repetition_penalty: 1.05`` with
#: ``do_sample``, ``top_k: 1``, ``top_p: 0.001`` (greedy-like sampling) or gemma-3-4b-it's
#: ``top_k: 64, top_p: 0.95``; each family's spec names its source (``generation_source``). Logit
#: shaping like this runs inside ``generate`` for every caller, which is why the tests of two-branch
#: defenses need it.
FAMILY_GENERATION: dict[str, dict[str, Any]] = {
    name: dict(spec.family_generation) for name, spec in SPECS.items() if spec.family_generation
}

GenerationPreset = Literal["plain", "family"] | Mapping[str, Any]

#: Bumped whenever a change here changes what gets built; part of the cache directory name.
BUILDER_VERSION = 2

#: Factor applied to the output-embedding rows of special and byte tokens (see ``quiet_token_ids``).
_QUIET_SCALE = 0.05

# Weight init draws from torch's process-wide RNG: builds in concurrent threads take turns.
_INIT_LOCK = threading.Lock()


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UnknownNameError(
            f"unknown tiny checkpoint family {family!r}{suggest(family, list(FAMILIES))} "
            f"(known: {', '.join(FAMILIES)})"
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars while saving (restores the previous setting)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _generation_extra(family: str, generation: GenerationPreset) -> dict[str, Any]:
    if generation == "plain":
        return {}
    if generation == "family":
        return dict(FAMILY_GENERATION.get(family, {}))
    if isinstance(generation, Mapping):
        return dict(generation)
    raise UnknownNameError(f"generation must be 'plain', 'family' or a mapping, not {generation!r}")


def _set_num_layers(config: Any, num_layers: int, spec: FamilySpec) -> None:
    """Give the language model ``num_layers`` decoder layers.

    Per-layer lists (``layer_types`` and the family's ``layer_lists``) repeat cyclically; lists of
    layer indices (``layer_index_lists``, e.g. Mllama's cross-attention layers) repeat their pattern.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    text = config.get_text_config()
    old = int(text.num_hidden_layers)
    for name in ("layer_types", *spec.layer_lists):
        kinds = getattr(text, name, None)
        if kinds:
            setattr(text, name, [kinds[i % len(kinds)] for i in range(num_layers)])
    for name in spec.layer_index_lists:
        chosen = set(getattr(text, name) or [])
        setattr(text, name, [i for i in range(num_layers) if i % old in chosen])
    text.num_hidden_layers = num_layers


def build_tiny_checkpoint(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    *,
    num_layers: int | None = None,
    generation: GenerationPreset = "plain",
) -> Path:
    """Build a tiny random-weight checkpoint of ``family`` and save it into ``out_dir``.

    Args:
        family: one of :data:`FAMILIES` (transformers ``model_type``).
        out_dir: directory to write (created if needed; files already there are overwritten).
        seed: seed of the random weights. The same seed gives byte-identical ``model.safetensors``;
            the tokenizer does not depend on it.
        num_layers: language-model decoder layers (default: the family's 2; Mllama counts its
            cross-attention layers too, 3 by default).
        generation: extra ``generation_config`` values: ``"plain"`` (token ids only), ``"family"``
            (what the family's real checkpoints ship, :data:`FAMILY_GENERATION`, e.g. Qwen's
            ``repetition_penalty: 1.05``) or an explicit mapping.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`. It loads with ``AutoProcessor.from_pretrained`` and
        ``AutoModelForImageTextToText.from_pretrained`` like a real checkpoint, offline.

    Raises:
        UnknownNameError: ``family`` is not one of :data:`FAMILIES`.
    """
    _check_family(family)
    return build_from_spec(
        SPECS[family], out_dir, seed, num_layers=num_layers, generation=_generation_extra(family, generation)
    )


def build_from_spec(
    spec: FamilySpec,
    out_dir: str | Path,
    seed: int = 0,
    *,
    num_layers: int | None = None,
    generation: Mapping[str, Any] | None = None,
) -> Path:
    """Build a tiny checkpoint from a family spec, registered or not (e.g. one a test writes to try
        an architecture vlmshield does not know).

        ``generation`` holds extra ``generation_config`` values. See :func:`build_tiny_checkpoint`.

        Example:
            >>> from dataclasses import replace
            >>> from vlmshield.testing._spec import FamilySpec
    from vlmshield.testing.families import SPECS
            >>> spec = replace(SPECS["llava"], chat_template="{{ messages[0]['content'][0]['text'] }}")
            >>> path = build_from_spec(spec, "out/plain-template-llava")  # doctest: +SKIP
    """
    import torch
    from transformers import GenerationConfig

    from vlmshield.testing._build import make_recipe, quiet_token_ids

    recipe = make_recipe(spec)
    if num_layers is not None:
        _set_num_layers(recipe.config, num_layers, spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Seed a private copy of the RNG state: the caller's global torch RNG is left untouched.
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = recipe.model_class(recipe.config).to(torch.float32)
    model.eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            for suffix, value in spec.init.items():
                if name.endswith(suffix):
                    param.fill_(value)
        rows = torch.tensor(quiet_token_ids(recipe.processor.tokenizer), dtype=torch.long)
        model.get_output_embeddings().weight[rows] *= _QUIET_SCALE
    model.generation_config = GenerationConfig(**{**recipe.generation, **(generation or {})})

    with _quiet_transformers():
        model.save_pretrained(out)
        recipe.processor.save_pretrained(out)
    return out


def cache_root() -> Path:
    """Where :func:`tiny_checkpoint` keeps its builds: ``$VLMSHIELD_CACHE/tiny`` (default
    ``~/.cache/vlmshield/tiny``)."""
    base = os.environ.get("VLMSHIELD_CACHE") or Path.home() / ".cache" / "vlmshield"
    return Path(base).expanduser() / "tiny"


def tiny_checkpoint(
    family: str,
    seed: int = 0,
    *,
    num_layers: int | None = None,
    generation: GenerationPreset = "plain",
) -> Path:
    """Return a cached tiny checkpoint of ``family``, building it on first use.

    ``num_layers`` and ``generation`` are passed to :func:`build_tiny_checkpoint`:

        >>> path = tiny_checkpoint("qwen2_vl", num_layers=4, generation="family")  # doctest: +SKIP

    The directory is ``<cache_root()>/<family>-seed<seed>-b<BUILDER_VERSION>-tf<transformers
    version>-<hash>``, where the short hash covers the options and the family's spec (so editing a
    family's data never reuses an old build). It is built in a temporary directory beside it and
    moved into place with one atomic ``os.replace``, so concurrent processes never see a half-written
    checkpoint (the loser of a race discards its own build).

    Raises:
        UnknownNameError: ``family`` is not one of :data:`FAMILIES`.
    """
    _check_family(family)
    import transformers

    root = cache_root()
    name = f"{family}-seed{seed}-b{BUILDER_VERSION}-tf{transformers.__version__}"
    options = {"num_layers": num_layers, "generation": _generation_extra(family, generation)}
    # The family's spec is part of the key, so editing a family's data never reuses a stale build.
    key = json.dumps(options, sort_keys=True) + repr(SPECS[family])
    name += f"-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    final = root / name
    if _complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is ordinary data
        build_tiny_checkpoint(family, tmp, seed=seed, num_layers=num_layers, generation=generation)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _complete(final):
                # Not a lost race (the winner's build would be complete and identical): something
                # else is in the way, e.g. the remains of a copy interrupted by hand. Replace it.
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _complete(path: Path) -> bool:
    # Directories only ever appear at the final path by an atomic rename of a finished build.
    return (path / "model.safetensors").is_file() and (path / "processor_config.json").is_file()
