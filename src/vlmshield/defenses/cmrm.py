"""CMRM: cross-modality representation manipulation (arXiv 2410.09047).

The paper's abstract (shared/seeds): the representations of multimodal inputs shift away from those
of text-only inputs, which are what the language backbone was aligned on; CMRM is an inference-time
intervention on the representations that recovers the backbone's alignment (LLaVA-7B's unsafe rate
61.53% -> 3.15%). Our implementation estimates that shift at the language model's decoder layers as

    v_l = h_l(text-only input) - h_l(input with a corrupted image)

(corruption: a blank image by default, or seeded noise) and adds ``alpha`` times it back to the
layer's output while generating, so that at each steered layer the image input's state is moved by
``alpha * v_l`` towards the text-only one. Because the residual stream carries each layer's addition
on, adding every ``v_l`` at once compounds; ``mode`` chooses how that is handled (see
:mod:`vlmshield.defenses.cmrm_vectors`; default ``sequential``, chosen by the measurements in
``docs/defenses.md``).

- Dataset level: vectors averaged over an anchor set (or its first principal direction), calibrated
  once with :func:`calibrate_cmrm` and saved as ``.safetensors`` (:class:`SteeringVectors`, with every
  calibration setting in its metadata). Rows without an image are never shifted.
- Sample level: each input's own vectors from its own extra prefills, per row within a batch.

Our choices, not statements of the paper (whose full text we could not read): the state is taken at
the last prompt token; all decoder layers are steered by default; positions ``all``; alpha 1.0 at
both levels (with ``sequential`` vectors, the value at which the calibration input lands on its
text-only state). Each is a parameter.

Example:
    >>> vecs = calibrate_cmrm(vlm, anchors)  # doctest: +SKIP
    >>> vecs.save("v.safetensors")  # doctest: +SKIP
    >>> cmrm = build_defense("cmrm:vectors=v.safetensors,alpha=1.0")  # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator

import vlmshield
from vlmshield.conversation import Conversation
from vlmshield.defenses.base import DefenseResult
from vlmshield.defenses.cmrm_vectors import (
    DEFAULT_MODE,
    Aggregator,
    Corruption,
    Mode,
    aggregate,
    anchor_checksum,
    shift_vectors,
)
from vlmshield.defenses.registry import DEFENSES, DefenseConfig, validate_config
from vlmshield.defenses.steering import Positions, SteeringVectors, steer
from vlmshield.errors import UserInputError
from vlmshield.generation import Cost, GenerationConfig

if TYPE_CHECKING:
    from vlmshield.models import VLM


def calibrate_cmrm(
    vlm: VLM,
    anchors: Sequence[Conversation],
    *,
    corruption: Corruption = "blank",
    aggregator: Aggregator = "mean",
    mode: Mode = DEFAULT_MODE,
    positions: Positions = "all",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> SteeringVectors:
    """Dataset-level CMRM vectors from an anchor set of conversations with images.

    Each anchor's vectors are measured alone (per row, so the result does not depend on
    ``batch_size``) and then aggregated. ``mode`` and ``positions`` must be those the defense will
    use: ``sequential`` vectors are measured with the earlier layers steered at those positions.

    Example:
        >>> vecs = calibrate_cmrm(vlm, [Conversation.single("q", images=["a.png"])])  # doctest: +SKIP
    """
    if not anchors:
        raise UserInputError("the anchor set is empty; give (image, query) pairs")
    with_images = [c for c in anchors if c.num_images]
    if not with_images:
        raise UserInputError("no anchor has an image; CMRM needs (image, query) pairs")
    layer_ids = list(range(vlm.num_layers)) if layers is None else list(layers)
    batches = [with_images[i : i + batch_size] for i in range(0, len(with_images), batch_size)]
    parts: list[torch.Tensor] = []
    iterator: Sequence[Sequence[Conversation]] = batches
    if progress:
        from rich.progress import track

        iterator = list(track(batches, description="calibrating CMRM"))  # type: ignore[arg-type]
    for batch in iterator:
        shifts, _ = shift_vectors(
            vlm, batch, corruption=corruption, seed=seed, layers=layer_ids, mode=mode, positions=positions
        )
        parts.append(shifts.float().cpu())
    vectors = aggregate(torch.cat(parts), aggregator)
    cfg = vlm.model.config
    meta = {
        "model": vlm.name,
        "revision": str(getattr(cfg, "_commit_hash", None) or "local"),
        "architecture": str((getattr(cfg, "architectures", None) or [type(vlm.model).__name__])[0]),
        "model_type": vlm.family,
        "hidden_size": str(vlm.hidden_size),
        "num_layers": str(vlm.num_layers),
        "mode": mode,
        "positions": positions,
        "aggregator": aggregator,
        "corruption": corruption,
        "seed": str(seed),
        "anchor_checksum": anchor_checksum(with_images),
        "anchor_size": str(len(with_images)),
        "vlmshield_version": vlmshield.__version__,
    }
    return SteeringVectors(vectors, layer_ids, meta)


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``all``, a slice ``a:b``, or ``i;j;k`` -> sorted layer indices (negative counts from the end).

    Example:
        >>> parse_layers("2:4", 6), parse_layers("0;-1", 6), parse_layers("all", 3)
        ([2, 3], [0, 5], [0, 1, 2])
    """
    spec = spec.strip()
    if spec == "all":
        return list(range(num_layers))
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            idx = list(range(num_layers))[slice(int(a) if a else None, int(b) if b else None)]
        else:
            idx = [
                int(x) % num_layers if -num_layers <= int(x) < num_layers else int(x) for x in spec.split(";")
            ]
    except ValueError:
        raise UserInputError(f"bad layers {spec!r}; use all, a:b or i;j;k") from None
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad or not idx:
        raise UserInputError(f"layers {spec!r} out of range for a model with {num_layers} decoder layers")
    return sorted(set(idx))


class CmrmConfig(DefenseConfig):
    """CMRM's arguments."""

    level: Literal["dataset", "sample"] | None = Field(None, description="default: dataset if vectors given")
    vectors: Path | None = None
    alpha: float | None = Field(None, ge=-100.0, le=100.0, description="default 1.0 (both levels)")
    mode: Mode | None = Field(
        None, description="sequential | increments | compounding; default: the vectors' own, else sequential"
    )
    allow_mismatch: bool = Field(
        False, description="apply vectors calibrated on another architecture (a warning instead of an error)"
    )
    layers: str = "all"
    positions: Positions = "all"
    corruption: Corruption = "blank"
    seed: int = 0

    @field_validator("layers")
    @classmethod
    def _layers_syntax(cls, v: str) -> str:
        if v.strip() != "all" and not all(ch.isdigit() or ch in ":;- " for ch in v):
            raise ValueError("use all, a:b or i;j;k")
        return v


class Cmrm:
    """The CMRM defense (registered as ``cmrm``).

    Example:
        >>> Cmrm(level="sample").spec()["alpha"], Cmrm(level="sample").spec()["mode"]
        (1.0, 'sequential')
    """

    name = "cmrm"

    def __init__(self, **kwargs: Any) -> None:
        cfg = validate_config(CmrmConfig, "cmrm", kwargs)
        level = cfg.level or ("dataset" if cfg.vectors is not None else None)
        if level is None:
            raise UserInputError(
                "cmrm needs vectors=PATH (dataset level; build them with `vlmshield calibrate cmrm`) "
                "or level=sample"
            )
        if level == "dataset" and cfg.vectors is None:
            raise UserInputError(
                "cmrm level=dataset needs vectors=PATH (build them with `vlmshield calibrate cmrm`)"
            )
        alpha = cfg.alpha if cfg.alpha is not None else 1.0
        self.vectors = SteeringVectors.load(cfg.vectors) if cfg.vectors is not None else None
        mode = cfg.mode
        if self.vectors is not None:
            made = self.vectors.metadata.get("mode", "compounding")  # files before modes held raw shifts
            if mode is not None and mode != made:
                raise UserInputError(
                    f"the vectors in {cfg.vectors} were calibrated with mode={made}; apply them with "
                    f"mode={made} or calibrate new ones with --mode {mode}"
                )
            mode = made  # type: ignore[assignment]
            calibrated_at = self.vectors.metadata.get("positions")
            if mode == "sequential" and calibrated_at and calibrated_at != cfg.positions:
                warnings.warn(
                    f"the sequential vectors in {cfg.vectors} were measured steering positions="
                    f"{calibrated_at}, but positions={cfg.positions} is applied",
                    stacklevel=2,
                )
        self.config = cfg.model_copy(update={"level": level, "alpha": alpha, "mode": mode or DEFAULT_MODE})

    @property
    def alpha(self) -> float:
        assert self.config.alpha is not None
        return self.config.alpha

    def spec(self) -> dict[str, Any]:
        d = self.config.model_dump(mode="json")
        if self.vectors is not None:
            d["vectors_metadata"] = self.vectors.metadata
        return {"name": self.name, **d}

    def row_vectors(
        self, vlm: VLM, conversations: Sequence[Conversation]
    ) -> tuple[torch.Tensor, list[int], Cost]:
        """Each row's vectors ``[B, layers, H]``, the steered layers, and the extra cost.

        Dataset level: the artifact's vectors (checked against ``vlm``), zero for rows without an
        image. Sample level: each row's own, from its own extra prefills (zero without an image).

        Example:
            >>> vecs, layers, cost = Cmrm(level="sample").row_vectors(vlm, convs)  # doctest: +SKIP
        """
        layers = parse_layers(self.config.layers, vlm.num_layers)
        if self.config.level == "sample":
            vecs, extra = shift_vectors(
                vlm,
                conversations,
                corruption=self.config.corruption,
                seed=self.config.seed,
                layers=layers,
                mode=self.config.mode or DEFAULT_MODE,
                positions=self.config.positions,
            )
            return vecs, layers, extra
        assert self.vectors is not None
        self.vectors.check_compatible(vlm, allow_mismatch=self.config.allow_mismatch)
        index = {layer: k for k, layer in enumerate(self.vectors.layers)}
        missing = [i for i in layers if i not in index]
        if missing:
            raise UserInputError(f"the steering vectors have no vector for layers {missing}")
        if self.config.mode != "compounding" and layers != self.vectors.layers:
            raise UserInputError(
                f"{self.config.mode} vectors hold per-layer corrections for layers "
                f"{self.vectors.layers}; calibrate new ones for layers={self.config.layers}"
            )
        shared = self.vectors.vectors[[index[i] for i in layers]].to(vlm.device)
        # rows without an image are never shifted (as at sample level, where their shift is 0)
        has_image = torch.tensor([c.num_images > 0 for c in conversations], device=vlm.device)
        return shared[None] * has_image[:, None, None], layers, Cost()

    def generate(
        self,
        vlm: VLM,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        *,
        categories: Sequence[str | None] | None = None,
    ) -> list[DefenseResult]:
        config = config or GenerationConfig()
        t0 = time.perf_counter()
        vecs, layers, extra = self.row_vectors(vlm, conversations)
        prep_time = time.perf_counter() - t0
        with steer(vlm, vecs, alpha=self.alpha, layers=layers, positions=self.config.positions):
            out = vlm.generate(conversations, config)
        n = len(conversations)
        results = []
        for i in range(n):
            cost = Cost(
                forward_passes=out.cost.forward_passes + extra.forward_passes,
                prompt_tokens=out.num_prompt_tokens[i] + extra.prompt_tokens // max(n, 1),
                new_tokens=out.num_new_tokens[i],
                wall_time_s=(out.cost.wall_time_s + prep_time) / n,
                calls=1 + extra.calls,
            )
            details: dict[str, Any] = {
                "level": self.config.level,
                "alpha": self.alpha,
                "mode": self.config.mode,
            }
            if self.config.level == "sample":
                details["shift_norm"] = float(vecs[i].norm(dim=-1).mean())
            results.append(
                DefenseResult(text=out.texts[i], token_ids=out.token_ids[i], cost=cost, details=details)
            )
        return results


def load_anchor_conversations(source: str, *, limit: int | None = None) -> list[Conversation]:
    """Anchor (image, query) pairs from a JSONL file (``{"image": PATH, "query": TEXT}`` per line,
    image paths relative to the file) or a registered benchmark name (its samples with images)."""
    import json

    path = Path(source)
    convs: list[Conversation] = []
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise UserInputError(f"anchor file not found: {source}")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image, query = obj["image"], obj["query"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserInputError(
                    f"{path}:{lineno}: expected a JSON object with 'image' and 'query'"
                ) from None
            img = Path(image) if Path(image).is_absolute() else path.parent / image
            convs.append(Conversation.single(str(query), images=[img]))
    else:
        from vlmshield.benchmarks import get_benchmark

        data = get_benchmark(source).load()
        convs = [s.to_conversation() for s in data.samples if s.images]
    if limit is not None:
        convs = convs[:limit]
    return convs


DEFENSES.register("cmrm", Cmrm)
