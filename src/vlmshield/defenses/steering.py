"""Steering vectors: one vector per language-model decoder layer, saved as ``.safetensors``.

A :class:`SteeringVectors` artifact records where it came from (model, revision, architecture, hidden
size, layer count, aggregator, corruption, anchor-set checksum and size, library version) in the
safetensors metadata; :meth:`SteeringVectors.check_compatible` refuses a model it does not fit.
:func:`steer` applies vectors through forward hooks held by a context manager that always removes them.

Example:
    >>> vecs = SteeringVectors.load("v.safetensors")  # doctest: +SKIP
    >>> with steer(vlm, vecs.vectors, alpha=1.0, layers=vecs.layers):  # doctest: +SKIP
    ...     out = vlm.generate([conv])
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlmshield.errors import UserInputError
from vlmshield.models.hooks import HiddenFn, edit_layer_outputs

if TYPE_CHECKING:
    from vlmshield.models import VLM

Positions = Literal["all", "last_and_generated", "generated"]
POSITIONS: tuple[str, ...] = ("all", "last_and_generated", "generated")
FORMAT = "vlmshield.steering/1"


@dataclass
class SteeringVectors:
    """``vectors[i]`` is added to the output of decoder layer ``layers[i]``.

    Attributes:
        vectors: ``[len(layers), hidden]`` float32.
        layers: decoder layer indices (0-based, language model only).
        metadata: provenance strings (see module docs).
    """

    vectors: torch.Tensor
    layers: list[int]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(
                f"vectors must be [len(layers), hidden]; got {tuple(self.vectors.shape)} for {len(self.layers)} layers"
            )

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, path: str | Path) -> Path:
        """Write the artifact (``.safetensors``, metadata as strings); returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, "format": FORMAT, "layers": json.dumps(self.layers)}
        tmp = p.with_name(p.name + ".tmp")
        save_file(
            {"vectors": self.vectors.detach().to(torch.float32).contiguous().cpu()}, str(tmp), metadata=meta
        )
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> SteeringVectors:
        """Read an artifact written by :meth:`save` (no pickle involved)."""
        p = Path(path)
        if not p.is_file():
            raise UserInputError(
                f"steering vectors not found: {p} (build them with `vlmshield calibrate cmrm`)"
            )
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserInputError(f"{p} is not a readable .safetensors file ({e})") from None
        if meta.get("format") != FORMAT or "vectors" not in tensors:
            raise UserInputError(
                f"{p} is not a vlmshield steering-vector file (format {meta.get('format')!r})"
            )
        layers = json.loads(meta.pop("layers"))
        meta.pop("format")
        return cls(tensors["vectors"], [int(x) for x in layers], meta)

    def check_compatible(self, vlm: VLM, *, allow_mismatch: bool = False) -> None:
        """Raise a clear error when these vectors do not fit ``vlm``'s language model.

        Sizes must match. Vectors from another architecture or model type are refused unless
        ``allow_mismatch`` (then a warning); from another model of the same architecture (e.g. a
        fine-tune), a warning.
        """
        if self.hidden_size != vlm.hidden_size:
            raise UserInputError(
                f"steering vectors have hidden size {self.hidden_size} but {vlm.name} has {vlm.hidden_size}; "
                "calibrate vectors for this model with `vlmshield calibrate cmrm`"
            )
        want = self.metadata.get("num_layers")
        if want is not None and int(want) != vlm.num_layers:
            raise UserInputError(
                f"steering vectors were calibrated on a model with {want} decoder layers but {vlm.name} has "
                f"{vlm.num_layers}; calibrate vectors for this model"
            )
        bad = [i for i in self.layers if not 0 <= i < vlm.num_layers]
        if bad:
            raise UserInputError(f"steering vectors name layers {bad} that {vlm.name} does not have")
        cfg = vlm.model.config
        arch = str((getattr(cfg, "architectures", None) or [type(vlm.model).__name__])[0])
        theirs = (self.metadata.get("architecture"), self.metadata.get("model_type"))
        if (theirs[0] and theirs[0] != arch) or (theirs[1] and theirs[1] != vlm.family):
            message = (
                f"steering vectors were calibrated on a {theirs[0]} ({theirs[1]}) but {vlm.name} is a "
                f"{arch} ({vlm.family})"
            )
            if not allow_mismatch:
                raise UserInputError(
                    message + "; calibrate vectors for this model, or pass allow_mismatch=true"
                )
            warnings.warn(message, stacklevel=3)
        elif self.metadata.get("model") and self.metadata["model"] != vlm.name:
            warnings.warn(
                f"steering vectors were calibrated on {self.metadata['model']}, applied to {vlm.name}",
                stacklevel=3,
            )


def _position_fn(vector: torch.Tensor, alpha: float, positions: Positions) -> HiddenFn:
    """The hook body for one layer. ``vector`` is ``[H]`` or ``[B, H]`` (one per row).

    A call with more than one position is a prefill (the prompt); a call with one position is a cached
    decoding step (a generated token).
    """

    def add(h: torch.Tensor) -> torch.Tensor:
        shift = (alpha * vector).to(device=h.device, dtype=h.dtype)
        if shift.dim() == 2:
            if shift.shape[0] != h.shape[0]:
                raise UserInputError(
                    f"per-row steering vectors for {shift.shape[0]} rows applied to a batch of {h.shape[0]}"
                )
            shift = shift[:, None, :]
        prefill = h.shape[1] > 1
        if positions == "all" or not prefill:
            if positions == "generated" and prefill:
                return h
            return h + shift
        if positions == "generated":
            return h
        # last_and_generated, prefill: only the last prompt token
        out = h.clone()
        out[:, -1:, :] = out[:, -1:, :] + shift
        return out

    return add


@contextmanager
def steer(
    vlm: VLM,
    vectors: torch.Tensor,
    *,
    alpha: float,
    layers: Sequence[int],
    positions: Positions = "all",
) -> Iterator[None]:
    """Add ``alpha * vectors`` to the outputs of the given decoder layers inside the ``with`` block.

    ``vectors`` is ``[len(layers), H]`` (dataset level: one set for all rows) or ``[B, len(layers), H]``
    (sample level: each row its own). ``positions``: ``all`` (every position, default),
    ``last_and_generated`` (the last prompt token and every generated token) or ``generated``.
    Hooks are removed on exit, even after an exception; ``alpha = 0`` leaves outputs bit-identical.
    """
    if positions not in POSITIONS:
        raise UserInputError(f"unknown positions {positions!r}; use one of {', '.join(POSITIONS)}")
    per_row = vectors.dim() == 3
    n = vectors.shape[1] if per_row else vectors.shape[0]
    if n != len(layers):
        raise UserInputError(f"{n} steering vectors for {len(layers)} layers")
    all_layers = vlm.decoder_layers()
    with ExitStack() as stack:
        for k, idx in enumerate(layers):
            v = vectors[:, k, :] if per_row else vectors[k]
            stack.enter_context(edit_layer_outputs(all_layers[idx], _position_fn(v, alpha, positions)))
        yield
