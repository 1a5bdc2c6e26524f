"""How much of the image-vs-text gap CMRM closes, layer by layer: the method's own goal, measured.

For inputs with images, at each decoder layer ``l`` and the last prompt token:

    remaining_l = ||h_steered,l - h_text,l|| / ||h_image,l - h_text,l||

averaged over inputs (``h_text``: the text-only input, ``h_image``: the input with its image,
unsteered). 0 means the steered state is the text-only state; 1 means steering did nothing; above 1,
steering moved the state farther away than no steering at all.

Example:
    >>> fractions = remaining_gap(vlm, convs, build_defense("cmrm:level=sample,alpha=1"))  # doctest: +SKIP
    >>> [round(f, 2) for f in fractions]  # doctest: +SKIP
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from vlmshield.conversation import Conversation
from vlmshield.defenses.steering import steer
from vlmshield.errors import UserInputError

if TYPE_CHECKING:
    from vlmshield.defenses.cmrm import Cmrm
    from vlmshield.models import VLM


def _states(vlm: VLM, convs: Sequence[Conversation]) -> torch.Tensor:
    out = vlm.forward(convs)
    return torch.stack([out.hidden[i] for i in range(vlm.num_layers)], dim=1)  # [B, L, H]


def remaining_gap(vlm: VLM, conversations: Sequence[Conversation], cmrm: Cmrm) -> list[float]:
    """Per decoder layer, the mean remaining fraction of the gap under ``cmrm`` (module docs).

    Only steered layers can close their gap; inputs without images are refused.
    """
    convs = list(conversations)
    if not convs or any(c.num_images == 0 for c in convs):
        raise UserInputError("remaining_gap needs inputs that all carry an image")
    vecs, layers, _ = cmrm.row_vectors(vlm, convs)
    text = _states(vlm, [c.text_only() for c in convs])
    plain = _states(vlm, convs)
    with steer(vlm, vecs, alpha=cmrm.alpha, layers=layers, positions=cmrm.config.positions):
        steered = _states(vlm, convs)
    before = (plain - text).norm(dim=-1)
    after = (steered - text).norm(dim=-1)
    return (after / before.clamp_min(1e-12)).mean(dim=0).tolist()
