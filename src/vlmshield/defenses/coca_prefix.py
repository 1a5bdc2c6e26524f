"""CoCA's shared prefill: the P and Q branches of a pair share everything before the principle.

P (with the principle) and Q (without) are the same conversation up to where the principle starts:
the chat template's header, a system turn, and the image tokens when the image comes before the
text (LLaVA, Qwen, ...). That shared prefix is computed once per sample and both branches continue
from its KV cache; what differs is prefilled for both rows as usual.

Layout (our choice): each row of the ``2B``-row batch is ``[pad, prefix, pad, rest]``. The prefixes
are left padded to one length ``Lc`` (the cached part, computed for the ``B`` P rows and copied to
the Q rows), the rests are left padded to one length after it. Position ids come from the attention
mask (cumulative sum), so every real token keeps the position it has in the plain layout and the
gap between prefix and rest is invisible. Images must all lie in the prefix (they are then encoded
once, in the prefix pass); where one does not, or where a family computes positions its own way
(Qwen's multimodal rotary positions, Gemma's bidirectional image attention), :func:`share_prefix`
returns None and CoCA runs the plain layout; so it does while hooks steer the decoder layers
(CMRM composed with CoCA). Which families share is the ``shared_prefix`` column
of :data:`vlmshield.models.families.FAMILIES`, set from the contract test that compares both
layouts on every family.

Example:
    >>> inputs = vlm.encode([*p_branches, *q_branches])  # doctest: +SKIP
    >>> plan = share_prefix(vlm, inputs, len(q_branches))  # doctest: +SKIP
    >>> plan.shared_tokens  # doctest: +SKIP
    [583, 583]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from vlmshield.models.derived_inputs import DerivedInputs, derive
from vlmshield.models.hooks import is_edited
from vlmshield.models.image_features import image_encoder_kwargs

if TYPE_CHECKING:
    from vlmshield.models import VLM

#: Per-token inputs rearranged with the ids (anything else in the inputs disables sharing).
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class SharedPrefix:
    """The rearranged ``2B`` rows and their cache.

    Attributes:
        inputs: ``generate`` inputs for the ``2B`` rows (``[pad, prefix, pad, rest]``), with the
            prefilled ``cache`` of the prefixes (P rows' copied to the Q rows) and no pixels.
        prompt_mask: ``[2B, T]``, True at each row's real prompt tokens.
        shared_tokens: per sample, the prefix length computed once instead of twice.
    """

    inputs: DerivedInputs
    prompt_mask: torch.Tensor
    shared_tokens: list[int]


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0]) if len(differs) else n


def shared_lengths(vlm: VLM, inputs: Any, n: int) -> list[int] | None:
    """Per pair, how many leading tokens P and Q share and can be cached, or None where the pairs
    cannot share (left padding broken, an image after the shared part)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    width = ids.shape[1]
    lengths = mask.sum(dim=1)
    if not bool((mask == (torch.arange(width, device=mask.device) >= width - lengths[:, None])).all()):
        return None  # not plain left padding
    rows = [ids[r, width - int(lengths[r]) :] for r in range(2 * n)]
    image = vlm.image_token_id
    out = []
    for i in range(n):
        p, q = rows[i], rows[n + i]
        # at least one token of each row stays uncached: its logits start the decode
        k = min(_common_prefix(p, q), len(p) - 1, len(q) - 1)
        if image is not None:
            for row in (p, q):
                where = (row == image).nonzero()
                if len(where) and int(where[-1]) >= k:
                    return None
        out.append(k)
    return out


def _rearrange(
    value: torch.Tensor, starts: list[int], ends: list[int], splits: list[int], fill: int, lc: int, width: int
) -> torch.Tensor:
    """Row ``r``'s real tokens ``value[r, starts[r]:ends[r]]`` split at ``splits[r]`` into the
    ``[pad, prefix | pad, rest]`` layout of width ``lc + width``."""
    out = value.new_full((value.shape[0], lc + width), fill)
    for r in range(value.shape[0]):
        s, e, k = starts[r], ends[r], splits[r]
        out[r, lc - k : lc] = value[r, s : s + k]
        out[r, lc + width - (e - s - k) :] = value[r, s + k : e]
    return out


def _steered(vlm: VLM) -> bool:
    """Whether a steering defense edits the decoder layers' outputs now (CMRM composed with CoCA:
    per-row shifts may treat a pair's P and Q rows differently, so their prefixes differ)."""
    return any(is_edited(layer) for layer in vlm.decoder_layers())


@torch.inference_mode()
def share_prefix(vlm: VLM, inputs: Any, n: int, max_new_tokens: int) -> SharedPrefix | None:
    """Prefill the shared prefixes of ``inputs`` (``n`` P rows then their ``n`` Q twins) once.

    Returns None (and computes nothing) where the family or the inputs do not allow it; the caller
    then runs the plain layout. A sliding attention window counts cache slots, padding included, so
    sharing is skipped where the sequence could outgrow the window (the gap between prefix and rest
    would move its edge).
    """
    if not vlm.info.shared_prefix or _steered(vlm):
        return None
    window = getattr(vlm.text_config, "sliding_window", None)
    if window and inputs["input_ids"].shape[1] * 2 + max_new_tokens > window:
        return None
    encoder = image_encoder_kwargs(vlm, inputs)
    image_keys = set(encoder[1]) if encoder is not None else set()
    if any(k not in PER_TOKEN_KEYS and k not in image_keys for k in inputs):
        return None
    lengths = shared_lengths(vlm, inputs, n)
    if lengths is None or not any(lengths):
        return None
    width_in = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].sum(dim=1).tolist()
    starts = [width_in - int(x) for x in real]
    ends = [width_in] * (2 * n)
    splits = lengths + lengths
    lc = max(lengths)
    rest = max(int(real[r]) - splits[r] for r in range(2 * n))
    fills = {"input_ids": vlm.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
    full = {
        key: _rearrange(inputs[key], starts, ends, splits, fills[key], lc, rest)
        for key in PER_TOKEN_KEYS
        if key in inputs
    }
    prefix = {key: value[:n, :lc] for key, value in full.items()}
    prefix_mask = prefix["attention_mask"]
    positions = (prefix_mask.long().cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)
    images = {k: v[: v.shape[0] // 2] for k, v in inputs.items() if k in image_keys}
    cache = DynamicCache(config=vlm.model.config)  # type: ignore[attr-defined]
    vlm.model(  # type: ignore[operator]
        **prefix, **images, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
    )
    cache.reorder_cache(torch.arange(n, device=prefix_mask.device).repeat(2))  # type: ignore[arg-type]
    generate_inputs = derive(inputs, {**full, "cache": cache})
    return SharedPrefix(
        inputs=generate_inputs, prompt_mask=full["attention_mask"].bool(), shared_tokens=lengths
    )
