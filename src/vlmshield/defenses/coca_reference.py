"""A naive CoCA for one sample, for tests and the overhead benchmark: slow and obviously correct.

Both full sequences are recomputed at every step with no KV cache; the calibrated logits
``z_P + alpha (z_P - z_Q)`` are computed from the model's raw logits, and then the logit shaping the
undefended model would apply (the processors transformers' own ``generate`` builds from the model's
``generation_config`` and the caller's settings: repetition penalty, minimum length, temperature,
top-k / top-p, ...) runs once, over the conversation without the principle plus the generated tokens.
The processors come from transformers' builder, not from :mod:`vlmshield.defenses.coca`, so a test
that compares the two checks the defense's choice and order of processors against the library's.

Example:
    >>> tokens, seconds = coca_reference_generate(vlm, conv, with_principle, 2.0, 16)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from vlmshield.conversation import Conversation
from vlmshield.defenses.coca import calibrate_logits
from vlmshield.generation import GenerationConfig

if TYPE_CHECKING:
    from vlmshield.models import VLM


def append_tokens(inputs: dict[str, Any], tokens: torch.Tensor) -> dict[str, Any]:
    """``inputs`` with ``tokens`` (``[B, k]``) appended; per-token side inputs are extended with 0."""
    out = dict(inputs)
    ids = inputs["input_ids"]
    k = tokens.shape[1]
    for key, value in inputs.items():
        if key == "input_ids":
            out[key] = torch.cat([value, tokens.to(value)], dim=1)
        elif key == "attention_mask":
            out[key] = torch.cat([value, value.new_ones(value.shape[0], k)], dim=1)
        elif isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == ids.shape:
            out[key] = torch.cat([value, value.new_zeros(value.shape[0], k)], dim=1)
    return out


@torch.inference_mode()
def coca_reference_generate(
    vlm: VLM,
    conversation: Conversation,
    principle_conversation: Conversation,
    alpha: float,
    max_new_tokens: int,
    *,
    config: GenerationConfig | None = None,
) -> tuple[list[int], float]:
    """Naive CoCA of one sample; returns the new token ids (EOS excluded) and the wall time.

    ``config`` (default: greedy with ``max_new_tokens``) selects greedy or seeded sampling; sampling
    draws from the shaped calibrated distribution with a ``torch.Generator`` seeded with
    ``config.seed`` (0 when unset), one draw per step, as the defense does.
    """
    config = config or GenerationConfig(max_new_tokens=max_new_tokens)
    config = config.with_(max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    p_in = dict(vlm.encode([principle_conversation]))
    q_in = dict(vlm.encode([conversation]))
    hf_config = vlm._hf_generation_config(config)
    shaping = vlm.model._get_logits_processor(
        generation_config=hf_config,
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
        z = shaping(q_in["input_ids"], calibrate_logits(z_p, z_q, alpha))
        if config.do_sample:
            token = int(torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator))
        else:
            token = int(z.argmax(dim=-1))
        if token in stop:
            break
        new.append(token)
        t = torch.tensor([[token]], device=vlm.device)
        p_in, q_in = append_tokens(p_in, t), append_tokens(q_in, t)
    return new, time.perf_counter() - t0
