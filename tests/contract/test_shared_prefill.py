"""CoCA's shared prefill and encode-each-image-once, on every family: the same tokens as the plain
layout, with less prefill.

The comparison runs with a repetition penalty, so that the logit shaping over a Q row's context (whose
padding now sits between its shared prefix and the rest) is exercised too. Families whose
``shared_prefix`` column is False must fall back to the plain layout: PaliGemma's prefix-LM attends
bidirectionally over the whole prompt, and sharing it gives other tokens (checked by hand by flipping
its column: this test then fails).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from vlmshield import GenerationConfig
from vlmshield.defenses.coca import Coca, decode_pairs
from vlmshield.models.families import FAMILIES as ROWS
from vlmshield.models.hooks import edit_layer_outputs
from vlmshield.models.image_features import image_encoder_kwargs

CFG = GenerationConfig(max_new_tokens=12)


@contextmanager
def penalty(vlm: Any, value: float) -> Iterator[None]:
    config = vlm.model.generation_config
    old = config.repetition_penalty
    config.repetition_penalty = value
    try:
        yield
    finally:
        config.repetition_penalty = old


def test_shared_prefill_gives_the_tokens_of_the_plain_layout(vlm, family, convs):
    p, q = Coca(alpha=2.0).branches(convs)
    with penalty(vlm, 1.3):
        plain = decode_pairs(vlm, p, q, 2.0, CFG, share=False)
        shared = decode_pairs(vlm, p, q, 2.0, CFG)
    assert shared.token_ids == plain.token_ids
    assert plain.shared_tokens == [0] * len(convs)
    if ROWS[family].shared_prefix:
        assert all(k > 0 for k in shared.shared_tokens)
        assert shared.cost.prompt_tokens == plain.cost.prompt_tokens - sum(shared.shared_tokens)
        # the image rows' shared part holds their images (so the prefix pass encoded them)
        if vlm.image_token_id is not None:
            inputs = vlm.encode(p)
            for i, k in enumerate(shared.shared_tokens):
                real = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]
                assert bool((real[k:] != vlm.image_token_id).all())
    else:
        assert shared.shared_tokens == [0] * len(convs)


def test_each_image_is_encoded_once(vlm, convs, monkeypatch):
    p, _ = Coca().branches(convs)
    found = image_encoder_kwargs(vlm, vlm.encode(p))
    if found is None:
        pytest.skip(f"{vlm.family} takes no pre-encoded image features (cross-attention)")
    encoder = found[0]
    seen: list[int] = []

    @functools.wraps(encoder)
    def counting(*args: Any, **kwargs: Any) -> Any:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        seen.append(int(pixels.shape[0]))
        return encoder(*args, **kwargs)

    monkeypatch.setattr(vlm.model.base_model, "get_image_features", counting)
    rows = {}
    for share in (False, True):
        seen.clear()
        Coca(alpha=1.0, share=share).generate(vlm, convs, GenerationConfig(max_new_tokens=2))
        rows[share] = sum(seen)
    assert rows[False] > 0
    assert rows[True] * 2 == rows[False]


def test_no_sharing_while_a_steering_hook_edits_the_layers(load_tiny, convs):
    vlm = load_tiny("llava")
    p, q = Coca().branches(convs)
    assert all(decode_pairs(vlm, p, q, 1.0, GenerationConfig(max_new_tokens=1)).shared_tokens)
    with edit_layer_outputs(vlm.decoder_layers()[0], lambda h: h):
        out = decode_pairs(vlm, p, q, 1.0, GenerationConfig(max_new_tokens=1))
    assert out.shared_tokens == [0] * len(convs)
    assert all(decode_pairs(vlm, p, q, 1.0, GenerationConfig(max_new_tokens=1)).shared_tokens)
