"""Slow, obviously-correct reference implementations to test fast code against.

- :func:`naive_coca` (and :func:`naive_coca_greedy`): CoCA decoding the naive way, with no KV cache:
  both full sequences (with and without the safety principle) are recomputed at every step, the
  calibrated logits are ``z = z_P + alpha * (z_P - z_Q)`` on the raw next-token logits, shaped once
  as the undefended model would shape them, and the chosen token is appended to both.
- :func:`append_tokens`: model inputs with generated tokens appended, as the model's own ``generate``
  extends them (attention mask, token type ids, multimodal token types).
- :func:`layer_states_from_hidden_states`: each decoder layer's output at the last prompt token, read
  from ``output_hidden_states`` instead of hooks.

Example:
    >>> from vlmshield.testing.reference import naive_coca_greedy
    >>> tokens = naive_coca_greedy(vlm, conv, conv_with_principle, alpha=2.0, max_new_tokens=8)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from vlmshield.conversation import Conversation
    from vlmshield.generation import GenerationConfig
    from vlmshield.models import VLM


def append_tokens(vlm: VLM, inputs: dict[str, Any], tokens: torch.Tensor) -> dict[str, Any]:
    """``inputs`` with ``tokens`` (``[B, k]``) appended, as ``generate`` would extend them.

    ``attention_mask`` gets ones; ``token_type_ids`` repeats the last prompt token's value (the
    family's ``generated_token_type`` where set: PaliGemma's answer tokens are 1); any other tensor
    with one value per token (``mm_token_type_ids``, ...) gets zeros (text); a per-token mask over
    images (Mllama's ``cross_attention_mask``) repeats the last prompt token's. Everything else
    (pixel values, image grids) is unchanged.

    Example:
        >>> inputs = append_tokens(vlm, dict(vlm.encode([conv])), torch.tensor([[42]]))  # doctest: +SKIP
    """
    out = dict(inputs)
    ids = inputs["input_ids"]
    k = tokens.shape[1]
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or key.startswith(("pixel", "image")):
            continue
        if value.dim() > 2 and key.endswith("attention_mask") and value.shape[:2] == ids.shape:
            # per-token masks over images (Mllama's cross_attention_mask): new tokens see what the
            # last prompt token saw
            out[key] = torch.cat([value, value[:, -1:].repeat(1, k, *[1] * (value.dim() - 2))], dim=1)
            continue
        if value.dim() != 2 or value.shape != ids.shape:
            continue
        if key == "input_ids":
            extra = tokens.to(value)
        elif key == "attention_mask":
            extra = value.new_ones(value.shape[0], k)
        elif key == "token_type_ids":
            fill = vlm.info.generated_token_type
            extra = value[:, -1:].repeat(1, k) if fill is None else value.new_full((value.shape[0], k), fill)
        else:
            extra = value.new_zeros(value.shape[0], k)
        out[key] = torch.cat([value, extra], dim=1)
    return out


@torch.inference_mode()
def naive_coca(
    vlm: VLM,
    conversation: Conversation,
    principle_conversation: Conversation,
    alpha: float,
    max_new_tokens: int,
    *,
    config: GenerationConfig | None = None,
) -> list[int]:
    """CoCA for one sample, recomputing both full sequences at every step (no KV cache).

    The calibrated logits ``z_P + alpha (z_P - z_Q)`` come from the model's raw logits; then the
    logit shaping the undefended model would apply runs once, over the conversation without the
    principle plus the generated tokens. The shaping processors come from transformers' own builder
    (``generate``'s, fed the model's ``generation_config`` merged with ``config``: repetition
    penalty, minimum length, temperature, top-k / top-p, ...), not from the defense, so comparing
    the two checks the defense's choice and order of processors. ``config`` (default greedy) may
    sample: one draw per step from a ``torch.Generator`` seeded with ``config.seed`` (0 when unset),
    as the defense draws. Returns the new token ids, EOS excluded.

    Example:
        >>> p, q = build_defense("coca:alpha=2").branches([conv], vlm=vlm)  # doctest: +SKIP
        >>> naive_coca(vlm, q[0], p[0], 2.0, 8)  # doctest: +SKIP
        [412, 87, 930, 15, 15, 602, 77, 301]
    """
    from vlmshield.generation import GenerationConfig

    config = (config or GenerationConfig()).with_(max_new_tokens=max_new_tokens)
    p_in = dict(vlm.encode([principle_conversation]))
    q_in = dict(vlm.encode([conversation]))
    shaping = vlm.model._get_logits_processor(
        generation_config=vlm._hf_generation_config(config),
        input_ids_seq_length=q_in["input_ids"].shape[1],
        encoder_input_ids=q_in["input_ids"],
        device=str(vlm.device),
        model_kwargs={},
    )
    generator = torch.Generator(device=vlm.device)
    generator.manual_seed(config.seed if config.seed is not None else 0)
    stop = set(vlm.eos_token_ids)
    new: list[int] = []
    for _ in range(max_new_tokens):
        z_p = vlm.model(**p_in, use_cache=False).logits[:, -1, :].float()
        z_q = vlm.model(**q_in, use_cache=False).logits[:, -1, :].float()
        z = shaping(q_in["input_ids"], z_p + alpha * (z_p - z_q))
        if config.do_sample:
            token = int(torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator))
        else:
            token = int(torch.argmax(z))
        if token in stop:
            break
        new.append(token)
        t = torch.tensor([[token]], device=vlm.device)
        p_in, q_in = append_tokens(vlm, p_in, t), append_tokens(vlm, q_in, t)
    return new


def naive_coca_greedy(
    vlm: VLM,
    conversation: Conversation,
    principle_conversation: Conversation,
    alpha: float,
    max_new_tokens: int,
) -> list[int]:
    """:func:`naive_coca` with greedy decoding (the model's own ``generation_config`` still applies)."""
    return naive_coca(vlm, conversation, principle_conversation, alpha, max_new_tokens)


def full_layer_list(vlm: VLM) -> nn.ModuleList:
    """The ``nn.ModuleList`` that holds the VLM's decoder layers (skipped layer types included).

    Example:
        >>> len(full_layer_list(load_vlm(str(tiny_checkpoint("mllama")))))  # doctest: +SKIP
        3
    """
    first = vlm.decoder_layers()[0]
    for module in vlm.model.modules():
        if isinstance(module, nn.ModuleList) and any(layer is first for layer in module):
            return module
    raise LookupError("the decoder layers are not in an nn.ModuleList")


@torch.inference_mode()
def layer_states_from_hidden_states(vlm: VLM, conversation: Conversation) -> dict[int, torch.Tensor]:
    """Decoder layer index (as in :meth:`VLM.decoder_layers`) -> its output at the last prompt token,
    read from the model's own ``output_hidden_states``.

    ``hidden_states`` holds the embeddings and then one entry per layer that ran; its last entry has
    the final norm applied, so the last layer that ran is left out. Layers that do not run for this
    input (Mllama's cross-attention layers without an image) have no entry.

    Example:
        >>> states = layer_states_from_hidden_states(vlm, conv.text_only())  # doctest: +SKIP
        >>> sorted(states)  # every decoder layer but the last  # doctest: +SKIP
        [0]
    """
    hs = vlm.model(**vlm.encode([conversation]), output_hidden_states=True, use_cache=False).hidden_states
    layers = vlm.decoder_layers()
    full = list(full_layer_list(vlm))
    if len(hs) - 1 == len(full):  # every layer ran
        positions = [next(i for i, m in enumerate(full) if m is layer) for layer in layers]
    elif len(hs) - 1 == len(layers):  # only the layers the VLM steers ran
        positions = list(range(len(layers)))
    else:
        raise LookupError(f"{len(hs)} hidden states for {len(full)} decoder layers")
    last = len(hs) - 2
    return {k: hs[pos + 1][0, -1].float() for k, pos in enumerate(positions) if pos < last}
