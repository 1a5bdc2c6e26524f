"""The adapter's own mechanics on one or two families; what every family must do is in
``tests/contract`` (generation, batching, hooks, inputs, defenses on every registered family)."""

from __future__ import annotations

import pytest
import torch

from vlmshield import Conversation
from vlmshield.errors import ModelLoadError
from vlmshield.models import edit_layer_outputs
from vlmshield.models.adapter import VLM

# PaliGemma's processor trips numpy 2's copy-keyword deprecation
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_hook_is_removed_after_an_exception(load_tiny):
    layer = load_tiny("llava").decoder_layers()[0]
    n = len(layer._forward_hooks)
    with pytest.raises(RuntimeError), edit_layer_outputs(layer, lambda h: h):
        raise RuntimeError("boom")
    assert len(layer._forward_hooks) == n


def test_layers_override_and_unknown_path(load_tiny):
    base = load_tiny("llava")
    bad = VLM(base.model, base.processor, name="x", family=base.info, layers_path="model.nothing.here")
    with pytest.raises(ModelLoadError, match="layers_path"):
        bad.decoder_layers()
    good = VLM(
        base.model, base.processor, name="x", family=base.info, layers_path="model.language_model.layers"
    )
    assert good.decoder_layers() == base.decoder_layers()


def test_skipped_layer_types_are_not_decoder_layers(load_tiny):
    """Mllama's cross-attention layers run only with an image: CMRM's layers are the others."""
    vlm = load_tiny("mllama")
    names = [type(m).__name__ for m in vlm.decoder_layers()]
    assert names and "MllamaCrossAttentionDecoderLayer" not in names
    assert vlm.num_layers == vlm.text_config.num_hidden_layers - len(vlm.text_config.cross_attention_layers)


def test_system_turn_as_plain_text_where_the_template_wants_it(load_tiny):
    prompt = load_tiny("gemma4").render(Conversation.single("q", system="Be brief."))
    assert "Be brief." in prompt and "'type'" not in prompt


def test_text_rows_of_a_processor_that_needs_images_go_through_the_tokenizer(load_tiny, test_image):
    """PaliGemma's processor refuses prompts without an image; mixed batches are split and merged."""
    vlm = load_tiny("paligemma")
    convs = [Conversation.single("hello there", images=[test_image]), Conversation.single("hi")]
    batch = vlm.encode(convs)
    for i, conv in enumerate(convs):
        alone = vlm.encode([conv])
        width = alone["input_ids"].shape[1]
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(batch[key][i, -width:], alone[key][0]), key
        assert not batch["attention_mask"][i, :-width].any()  # left padding
    assert batch["pixel_values"].shape[0] == 1
