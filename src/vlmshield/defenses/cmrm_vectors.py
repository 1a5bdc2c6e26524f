"""CMRM's shift vectors: how an image moves each decoder layer's state away from the text-only one.

For an input ``x`` with image(s), ``h_t,l`` is layer ``l``'s output for the text-only input (no image
at all) and ``h_c,l`` its output with every image corrupted (blank, or seeded noise), both at the
last prompt token. Three ways of turning them into what the defense adds at each steered layer
(``mode``), because adding ``v_l = h_t,l - h_c,l`` at every layer at once compounds: the residual
stream carries each layer's addition forward, so layer ``l`` receives roughly the sum of the earlier
vectors plus its own.

- ``sequential`` (default): one text-only prefill gives the targets ``h_t,l``; one corrupted prefill
  with a hook at each steered layer measures, at that layer, ``u_l = h_t,l - s_l`` where ``s_l`` is
  the state *with the earlier layers already steered*, and adds ``u_l`` (at the positions the
  defense will steer) before the next layer runs. Applying ``alpha * u`` with alpha 1 to that same
  input puts every steered layer on its text-only state.
- ``increments``: ``v_l - v_prev`` where ``v_prev`` is the raw shift of the previous steered layer:
  in a residual stream where later layers pass a shift on unchanged, layer ``l`` then carries ``v_l``.
- ``compounding``: raw ``v_l`` at every layer (the first version's behaviour, kept for comparison).

The raw shifts (``compounding`` and ``increments``) come from one batched forward pass of ``2B``
rows; ``sequential`` needs two passes of ``B`` rows. Rows without an image get a zero shift. Noise
images are seeded per input (from the input's content and ``seed``), so they never depend on the
batch, its size or its order.

Example:
    >>> shifts, cost = shift_vectors(vlm, convs, mode="sequential")  # doctest: +SKIP
    >>> shifts.shape  # [B, layers, hidden]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Literal

import torch

from vlmshield.conversation import Conversation
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost
from vlmshield.images import as_pil
from vlmshield.models.hooks import edit_layer_outputs

if TYPE_CHECKING:
    from vlmshield.defenses.steering import Positions
    from vlmshield.models import VLM

Aggregator = Literal["mean", "pca"]
Corruption = Literal["blank", "noise"]
Mode = Literal["sequential", "increments", "compounding"]
MODES: tuple[str, ...] = ("sequential", "increments", "compounding")
DEFAULT_MODE: Mode = "sequential"


def anchor_checksum(conversations: Sequence[Conversation]) -> str:
    """sha256 over the conversations' texts and image pixels (order matters)."""
    h = hashlib.sha256()
    for conv in conversations:
        for m in conv.messages:
            h.update(m.role.encode() + b"\0" + m.text.encode() + b"\0")
            for im in m.images:
                pil = as_pil(im)
                h.update(f"{pil.size}".encode() + pil.tobytes())
    return h.hexdigest()


def input_seed(conv: Conversation, seed: int) -> int:
    """The noise seed of one input: a function of its content and ``seed`` only.

    Example:
        >>> input_seed(Conversation.single("q"), 0) == input_seed(Conversation.single("q"), 0)
        True
    """
    digest = hashlib.sha256(f"{seed}\0{anchor_checksum([conv])}".encode()).hexdigest()
    return int(digest[:8], 16)


def corrupted(conv: Conversation, corruption: Corruption, seed: int) -> Conversation:
    """``conv`` with every image replaced by the corruption (noise seeded per input)."""
    per_input = input_seed(conv, seed) if corruption == "noise" else 0
    return conv.with_replaced_images(corruption, seed=per_input)


def _stack(hidden: dict[int, torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """``[B, L, H]`` on the first layer's device (layers of a sharded model live on several)."""
    device = hidden[layers[0]].device
    return torch.stack([hidden[i].to(device) for i in layers], dim=1)


def raw_shifts(
    vlm: VLM, conversations: Sequence[Conversation], corruption: Corruption, seed: int, layers: Sequence[int]
) -> tuple[torch.Tensor, Cost]:
    """``h_t,l - h_c,l`` per input and layer, ``[B, L, H]``, from one batched pass of ``2B`` rows."""
    texts = [c.text_only() for c in conversations]
    bad = [corrupted(c, corruption, seed) for c in conversations]
    out = vlm.forward([*texts, *bad], layers=list(layers))
    stacked = _stack(out.hidden, layers)
    b = len(conversations)
    return stacked[:b] - stacked[b:], out.cost


def _steer_slice(h: torch.Tensor, shift: torch.Tensor, positions: Positions) -> torch.Tensor:
    """Add ``shift`` (``[B, H]``) to a prefill's states at the positions the defense steers."""
    if positions == "all":
        return h + shift[:, None, :].to(h.dtype)
    out = h.clone()  # last_and_generated / generated: the prefill's last token stands for the first step
    out[:, -1, :] = out[:, -1, :] + shift.to(h.dtype)
    return out


@contextmanager
def _sequential_hooks(
    vlm: VLM, targets: torch.Tensor, layers: Sequence[int], positions: Positions, found: list[torch.Tensor]
) -> Iterator[None]:
    all_layers = vlm.decoder_layers()

    def make(k: int):  # type: ignore[no-untyped-def]
        def fn(h: torch.Tensor) -> torch.Tensor:
            u = targets[:, k, :].to(h.device) - h[:, -1, :].float()
            found.append(u)
            return _steer_slice(h, u, positions)

        return fn

    with ExitStack() as stack:
        for k, idx in enumerate(layers):
            stack.enter_context(edit_layer_outputs(all_layers[idx], make(k)))
        yield


def sequential_shifts(
    vlm: VLM,
    conversations: Sequence[Conversation],
    corruption: Corruption,
    seed: int,
    layers: Sequence[int],
    positions: Positions = "all",
) -> tuple[torch.Tensor, Cost]:
    """Per input, the vectors that put each steered layer on its text-only state given the earlier
    layers' steering (see the module docs), ``[B, L, H]``; two passes of ``B`` rows."""
    texts = vlm.forward([c.text_only() for c in conversations], layers=list(layers))
    targets = _stack(texts.hidden, layers)
    found: list[torch.Tensor] = []
    with _sequential_hooks(vlm, targets, layers, positions, found):
        bad = vlm.forward([corrupted(c, corruption, seed) for c in conversations], layers=[])
    if len(found) != len(layers):
        raise UserInputError(
            f"the steered layers ran {len(found)} times for {len(layers)} layers; the decoder layers of "
            f"{vlm.name} are not called once each per forward pass"
        )
    return torch.stack([u.to(found[0].device) for u in found], dim=1), texts.cost + bad.cost


def shift_vectors(
    vlm: VLM,
    conversations: Sequence[Conversation],
    *,
    corruption: Corruption = "blank",
    seed: int = 0,
    layers: Sequence[int] | None = None,
    mode: Mode = DEFAULT_MODE,
    positions: Positions = "all",
) -> tuple[torch.Tensor, Cost]:
    """What CMRM adds per input at each steered layer (before ``alpha``), ``[B, L, H]`` float32.

    ``mode`` is ``sequential``, ``increments`` or ``compounding`` (module docs). ``positions`` only
    matters for ``sequential``, whose measurement steers the prefill as the defense will. Rows
    without an image get zeros.

    Example:
        >>> v, _ = shift_vectors(vlm, [conv], mode="increments")  # doctest: +SKIP
    """
    if mode not in MODES:
        raise UserInputError(f"unknown CMRM mode {mode!r}; use one of {', '.join(MODES)}")
    layer_ids = list(range(vlm.num_layers)) if layers is None else list(layers)
    if mode == "sequential":
        shifts, cost = sequential_shifts(vlm, conversations, corruption, seed, layer_ids, positions)
    else:
        shifts, cost = raw_shifts(vlm, conversations, corruption, seed, layer_ids)
        if mode == "increments":
            shifts = to_increments(shifts)
    has_image = torch.tensor([c.num_images > 0 for c in conversations], device=shifts.device)
    return shifts.float() * has_image[:, None, None], cost


def to_increments(shifts: torch.Tensor) -> torch.Tensor:
    """``v_l - v_prev`` along the layer axis (``[..., L, H]``); the first steered layer keeps ``v``.

    Example:
        >>> to_increments(torch.tensor([[1.0], [3.0], [4.0]])).flatten().tolist()
        [1.0, 2.0, 1.0]
    """
    prev = torch.zeros_like(shifts)
    prev[..., 1:, :] = shifts[..., :-1, :]
    return shifts - prev


def aggregate(shifts: torch.Tensor, aggregator: Aggregator) -> torch.Tensor:
    """``[N, L, H]`` -> ``[L, H]``.

    ``mean``: the average shift. ``pca``: per layer, the first principal direction of the (uncentred)
    shifts, sign aligned with the mean and scaled by the mean's projection on it, so alpha keeps the
    same meaning as with ``mean``.

    Example:
        >>> aggregate(torch.ones(3, 2, 4), "mean").shape
        torch.Size([2, 4])
    """
    mean = shifts.mean(dim=0)
    if aggregator == "mean":
        return mean
    if aggregator != "pca":
        raise UserInputError(f"unknown aggregator {aggregator!r}; use mean or pca")
    out = torch.empty_like(mean)
    for layer in range(shifts.shape[1]):
        x = shifts[:, layer, :].double()
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        direction = vh[0]
        proj = torch.dot(mean[layer].double(), direction)
        if proj < 0:
            direction, proj = -direction, -proj
        out[layer] = (proj * direction).to(out.dtype)
    return out
