"""Tiny checkpoints: build offline, load like real checkpoints through the Auto classes, format chats.

Generation and everything else a family must do through vlmshield is in ``tests/contract``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vlmshield.errors import UnknownNameError
from vlmshield.models.families import FAMILIES as ROWS
from vlmshield.testing import BUILDER_VERSION, FAMILIES, build_tiny_checkpoint, tiny_checkpoint
from vlmshield.testing.families import SPECS

# The placeholder token each family's processor repeats once per image feature (from the family table).
IMAGE_TOKENS = {name: spec.image_token for name, spec in SPECS.items()}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny matmuls on a shared CPU are much faster on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def built() -> Callable[[str], Path]:
    """Each family's checkpoint, from the tiny-checkpoint cache (built on first use)."""

    def get(family: str) -> Path:
        for module in SPECS[family].requires:
            pytest.importorskip(module, reason=f"{family}'s processor needs {module}")
        return tiny_checkpoint(family)

    return get


@pytest.fixture(scope="session")
def loaded(built: Callable[[str], Path]) -> Callable[[str], tuple[Any, Any]]:
    """Processor and model of each family, loaded offline through the Auto classes."""
    import huggingface_hub.constants
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cache: dict[str, tuple[Any, Any]] = {}

    def get(family: str) -> tuple[Any, Any]:
        if family not in cache:
            path = built(family)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_HUB_OFFLINE", "1")
                mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
                processor = AutoProcessor.from_pretrained(path)
                model = AutoModelForImageTextToText.from_pretrained(path)
            cache[family] = (processor, model.eval())
        return cache[family]

    return get


def _conversation(with_image: bool) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "What is shown in this picture?"}]
    if with_image:
        image = Image.new("RGB", (40, 30), (200, 30, 30))
        content.insert(0, {"type": "image", "image": image})
    return [{"role": "user", "content": content}]


def _inputs(processor: Any, with_image: bool) -> Any:
    return processor.apply_chat_template(
        _conversation(with_image),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loads_offline_with_auto_classes(
    family: str, built: Callable[[str], Path], loaded: Callable[[str], tuple[Any, Any]]
) -> None:
    path = built(family)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (path / name).is_file(), name
    processor, model = loaded(family)
    assert model.config.model_type == family
    assert processor.chat_template
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    gen = model.generation_config
    tok = processor.tokenizer
    assert gen.pad_token_id == tok.pad_token_id
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.eos_token_id in eos


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_with_image_gives_image_tokens_and_pixels(
    family: str, loaded: Callable[[str], tuple[Any, Any]]
) -> None:
    processor, model = loaded(family)
    inputs = _inputs(processor, with_image=True)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    assert image_token_id == model.config.image_token_id
    n_image_tokens = int((inputs["input_ids"] == image_token_id).sum())
    assert 1 <= n_image_tokens <= 64
    assert inputs["pixel_values"].numel() > 0
    if ROWS[family].text_only_via_tokenizer:  # PaliGemma's processor refuses prompts without an image
        with pytest.raises(ValueError, match="images"):
            _inputs(processor, with_image=False)
        return
    text_only = _inputs(processor, with_image=False)
    assert "pixel_values" not in text_only
    assert int((text_only["input_ids"] == image_token_id).sum()) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_config_token_ids_are_in_the_vocabulary(family: str, built: Callable[[str], Path]) -> None:
    path = built(family)
    config = json.loads((path / "config.json").read_text())
    vocab_size = config["text_config"]["vocab_size"]
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    ids = set(tokenizer["model"]["vocab"].values()) | {t["id"] for t in tokenizer["added_tokens"]}
    assert ids == set(range(vocab_size))

    def token_ids(tree: dict[str, Any]) -> Iterator[tuple[str, int]]:
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from token_ids(value)
            elif "token" in key and ("_id" in key or "index" in key) and value is not None:
                for v in value if isinstance(value, list) else [value]:
                    yield key, v

    found = list(token_ids(config)) + list(
        token_ids(json.loads((path / "generation_config.json").read_text()))
    )
    needed = {"eos_token_id", "pad_token_id"} | ({"bos_token_id"} if tokenizer_has_bos(path) else set())
    assert {key for key, _ in found} >= needed
    bad = [(key, v) for key, v in found if not 0 <= v < vocab_size]
    assert not bad


def tokenizer_has_bos(path: Path) -> bool:
    """GLM has no BOS token (its prompts start with ``[gMASK]<sop>``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).bos_token is not None


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_gives_identical_weights(built: Callable[[str], Path], tmp_path: Path) -> None:
    again = build_tiny_checkpoint("qwen2_vl", tmp_path / "again", seed=0)
    assert _digest(again) == _digest(built("qwen2_vl"))
    other = build_tiny_checkpoint("qwen2_vl", tmp_path / "other", seed=1)
    assert _digest(other) != _digest(again)
    assert (again / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_checkpoint("llava", tmp_path, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_family_suggests_close_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'llava'"):
        build_tiny_checkpoint("lava", tmp_path)
    with pytest.raises(UnknownNameError, match="known: llava"):
        tiny_checkpoint("not-a-family")


def test_tiny_checkpoint_is_cached_under_vlmshield_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMSHIELD_CACHE", str(tmp_path))
    first = tiny_checkpoint("llava", seed=3)
    assert first.parent == tmp_path / "tiny"
    assert first.name.startswith(f"llava-seed3-b{BUILDER_VERSION}-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_checkpoint("llava", seed=3) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [first.name]  # no temp dir left


def test_tiny_checkpoint_replaces_an_incomplete_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMSHIELD_CACHE", str(tmp_path))
    final = tiny_checkpoint("llava")
    shutil.rmtree(final)
    final.mkdir()
    (final / "config.json").write_text("{}")  # e.g. an interrupted manual copy
    assert tiny_checkpoint("llava") == final
    assert (final / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [final.name]


def test_tiny_checkpoint_losing_a_race_keeps_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vlmshield.testing.tiny as tiny

    monkeypatch.setenv("VLMSHIELD_CACHE", str(tmp_path))
    winner = tiny_checkpoint("llava", seed=5)
    stamp = (winner / "model.safetensors").stat().st_mtime_ns
    shutil.move(winner, tmp_path / "winner")
    real_build = tiny.build_tiny_checkpoint

    def build_while_another_process_finishes(
        family: str, out_dir: Path, seed: int = 0, **options: Any
    ) -> Path:
        path = real_build(family, out_dir, seed=seed, **options)
        shutil.move(tmp_path / "winner", winner)  # the other process's rename lands first
        return path

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", build_while_another_process_finishes)
    assert tiny_checkpoint("llava", seed=5) == winner
    assert (winner / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [winner.name]


def test_families_are_transformers_model_types() -> None:
    from transformers import CONFIG_MAPPING

    assert set(FAMILIES) == set(IMAGE_TOKENS)
    assert all(f in CONFIG_MAPPING for f in FAMILIES)


def test_num_layers_and_family_generation_config_are_written(tmp_path: Path) -> None:
    import json

    from transformers import AutoConfig

    path = build_tiny_checkpoint("qwen2_vl", tmp_path / "q", num_layers=3, generation="family")
    assert AutoConfig.from_pretrained(path).get_text_config().num_hidden_layers == 3
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["repetition_penalty"] == 1.05
    plain = build_tiny_checkpoint("qwen2_vl", tmp_path / "p")
    assert "repetition_penalty" not in json.loads((plain / "generation_config.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_num_layers_and_family_generation_work_for_every_family(family: str) -> None:
    """Per-layer lists repeat, layer-index lists keep their pattern, and the model still loads and runs."""
    from transformers import AutoConfig

    from vlmshield import Conversation
    from vlmshield.models import load_vlm

    for module in SPECS[family].requires:
        pytest.importorskip(module)
    path = tiny_checkpoint(family, num_layers=3, generation="family")
    text = AutoConfig.from_pretrained(path).get_text_config()
    assert text.num_hidden_layers == 3
    for name in ("layer_types", *SPECS[family].layer_lists):
        if getattr(text, name, None):
            assert len(getattr(text, name)) == 3, name
    for name in SPECS[family].layer_index_lists:
        assert all(0 <= i < 3 for i in getattr(text, name)), name
    gen = json.loads((path / "generation_config.json").read_text())
    assert {k: gen.get(k) for k in SPECS[family].family_generation} == dict(SPECS[family].family_generation)
    if ROWS[family].status == "supported":
        vlm = load_vlm(str(path), device="cpu")
        assert torch.isfinite(vlm.forward([Conversation.single("hi")]).logits).all()
