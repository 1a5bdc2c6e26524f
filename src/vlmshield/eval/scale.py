"""Options for evaluating at scale: batch order, model placement over GPUs, remote endpoints.

:class:`ScaleOptions` (pydantic) holds what ``vlmshield eval`` takes beyond the single-process
settings: ``order`` of the batches (``length``: sorted by prompt length, the default for new runs;
``dataset``: the benchmarks' order), the placement of a model over GPUs (``device_map``,
``max_memory``, ``gpus_per_rank``, ``offload_folder``), the limits towards a remote model or judge
endpoint (``concurrency``, ``rate_limit``, ``judge_concurrency``, ``judge_rate_limit``: totals for the
run, shared between its ranks) and how long a rank waits for the others (``dist_timeout_s``).

:func:`placement_for_rank` decides where one rank's model lives: with ``gpus_per_rank=K`` the local
rank ``r`` of a node uses GPUs ``r*K .. r*K+K-1`` (``device_map="auto"`` restricted to them through
``max_memory``), so 8 GPUs run as 4 ranks x 2 GPUs; with one GPU per rank, ``cuda:<local rank>``.

:func:`check_remote_defenses` refuses defenses that need the model's weights on a remote model.

Example:
    >>> parse_max_memory("0=20GiB,1=22GiB,cpu=64GiB")
    {0: '20GiB', 1: '22GiB', 'cpu': '64GiB'}
    >>> placement_for_rank(ScaleOptions(gpus_per_rank=2), "auto", local_rank=1, local_world_size=4,
    ...                    world_size=4, cuda_count=8, free_bytes=lambda i: 80 << 30).gpus
    (2, 3)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlmshield.errors import UserInputError

Order = Literal["length", "dataset"]
ORDERS: tuple[str, ...] = ("length", "dataset")
DEVICE_MAP_STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
#: Defenses that only call ``generate`` (no logits, hidden states or hooks): they run on a remote model.
REMOTE_DEFENSES: tuple[str, ...] = ("none", "ecso")
_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$", re.IGNORECASE)


class ScaleOptions(BaseModel):
    """How an evaluation is spread over processes, GPUs and endpoints (none of it decides results,
    except ``order``, which is part of the run's identity).

    Example:
        >>> ScaleOptions(device_map="auto", max_memory="cpu=64GiB").max_memory
        'cpu=64GiB'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    order: Order | None = Field(
        None,
        description="batch order: length (sorted by prompt length) or dataset; None: length for a "
        "new run, the recorded order when resuming",
    )
    base_url: str | None = Field(None, description="endpoint of an openai:MODEL model")
    concurrency: int = Field(16, ge=1, le=4096, description="requests in flight to a remote model (total)")
    rate_limit: float | None = Field(None, gt=0, description="requests per second to a remote model (total)")
    judge_concurrency: int | None = Field(None, ge=1, le=4096, description="requests in flight per API judge")
    judge_rate_limit: float | None = Field(
        None, gt=0, description="requests per second per API judge (total)"
    )
    device_map: str | None = Field(
        None, description="auto, balanced, balanced_low_0, sequential or a JSON file"
    )
    max_memory: str | None = Field(None, description="SIZE (each GPU) or DEV=SIZE,... (DEV: N, gpu, cpu)")
    gpus_per_rank: int | None = Field(None, ge=1, le=64, description="GPUs of each data-parallel rank")
    offload_folder: str | None = Field(None, description="where device_map 'disk' weights go")
    dist_timeout_s: float = Field(10800.0, gt=0, description="how long a rank waits for the others")

    def check(self) -> None:
        """Parse what is given as text (one-line errors), so a bad value fails before any model loads."""
        if self.max_memory is not None:
            parse_max_memory(self.max_memory)
        if self.device_map is not None:
            parse_device_map(self.device_map)
        if self.offload_folder is not None and Path(self.offload_folder).is_file():
            raise UserInputError(f"--offload-folder {self.offload_folder} is a file; pass a folder")


def scale_options(**values: Any) -> ScaleOptions:
    """:class:`ScaleOptions` from keyword values, a bad one reported on one line.

    Example:
        >>> scale_options(concurrency=0)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        UserInputError: invalid scale options: concurrency: Input should be greater than or equal to 1
    """
    try:
        opts = ScaleOptions(**values)
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err['loc']) or 'options'}: {err['msg']}" for err in e.errors()]
        raise UserInputError("invalid scale options: " + "; ".join(parts)) from None
    opts.check()
    return opts


def parse_max_memory(text: str) -> dict[int | str, str]:
    """``SIZE`` (every GPU the rank uses) or ``DEV=SIZE,...`` with DEV a GPU number (within the rank's
    GPUs), ``gpu`` (every GPU) or ``cpu``; sizes as accelerate writes them (``20GiB``, ``500MB``)."""
    out: dict[int | str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, eq, size = part.rpartition("=")
        dev: int | str = "gpu" if not eq else key.strip().lower()
        size = size.strip()
        if not _SIZE.match(size):
            raise UserInputError(
                f"--max-memory: bad size {size!r} in {text!r}; write e.g. 20GiB or 0=20GiB,cpu=64GiB"
            )
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)
        elif dev not in ("gpu", "cpu"):
            raise UserInputError(
                f"--max-memory: unknown device {dev!r} in {text!r}; use a GPU number, gpu or cpu"
            )
        out[dev] = size.replace(" ", "")
    if not out:
        raise UserInputError("--max-memory is empty; write e.g. 20GiB or 0=20GiB,cpu=64GiB")
    return out


def parse_device_map(text: str) -> str | dict[str, Any]:
    """A strategy name, or a JSON file (or inline JSON object) mapping module names to devices."""
    value = text.strip()
    if value in DEVICE_MAP_STRATEGIES:
        return value
    raw = value
    if not value.startswith("{"):
        p = Path(value).expanduser()
        if not p.is_file():
            raise UserInputError(
                f"--device-map {text!r}: use one of {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON file "
                "mapping module names to devices"
            )
        raw = p.read_text(encoding="utf-8")
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserInputError(f"--device-map {text!r} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
        raise UserInputError(f"--device-map {text!r}: the JSON must map module names to devices")
    return mapping


@dataclass(frozen=True)
class Placement:
    """Where one rank's model goes: ``device`` (no ``device_map``) or ``device_map`` + ``max_memory``."""

    device: str
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[int | str, int | str] | None = None
    gpus: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        """JSON for the manifest."""
        dm = self.device_map if not isinstance(self.device_map, dict) else "custom"
        mm = None if self.max_memory is None else {str(k): v for k, v in self.max_memory.items()}
        return {"device": self.device, "device_map": dm, "max_memory": mm, "gpus": list(self.gpus)}


def placement_for_rank(
    options: ScaleOptions,
    device: str,
    *,
    local_rank: int,
    local_world_size: int,
    world_size: int,
    cuda_count: int,
    free_bytes: Callable[[int], int],
) -> Placement:
    """The placement of the model of local rank ``local_rank`` (of ``local_world_size`` on its node).

    Without a device map, one device: ``device`` as given, or for ``auto`` ``cuda:<local rank>`` under
    a launcher (``cuda`` alone, else ``cpu``). With ``device_map`` or ``gpus_per_rank``, the rank's
    GPUs (``gpus_per_rank``, default: the node's GPUs shared evenly between its ranks) each get their
    ``max_memory`` (default 90% of what is free), other GPUs none.
    """
    memory = parse_max_memory(options.max_memory) if options.max_memory else {}
    device_map = parse_device_map(options.device_map) if options.device_map else None
    k = options.gpus_per_rank
    if device_map is None and (k is None or k == 1) and not memory:
        if device != "auto":
            return Placement(device)
        if cuda_count == 0:
            return Placement("cpu")
        if world_size == 1 and local_world_size == 1:
            return Placement("cuda")
        if local_rank >= cuda_count:
            raise UserInputError(
                f"local rank {local_rank} has no GPU: {cuda_count} visible for {local_world_size} ranks on "
                "this node; start at most one rank per GPU (--nproc-per-node)"
            )
        return Placement(f"cuda:{local_rank}", gpus=(local_rank,))
    if device_map is None:
        device_map = "auto"
    if cuda_count == 0:  # CPU (and disk offload) only
        mm: dict[int | str, int | str] | None = {"cpu": memory["cpu"]} if "cpu" in memory else None
        return Placement("cpu", device_map, mm)
    if k is None:
        k = max(1, cuda_count // max(local_world_size, 1))
    first = local_rank * k
    gpus = tuple(range(first, first + k))
    if gpus[-1] >= cuda_count:
        raise UserInputError(
            f"local rank {local_rank} needs GPUs {gpus[0]}-{gpus[-1]} ({k} per rank) but {cuda_count} are "
            f"visible; lower --gpus-per-rank or --nproc-per-node (ranks x GPUs per rank <= GPUs per node)"
        )
    budget: dict[int | str, int | str] = {}
    for j, g in enumerate(gpus):
        size = memory.get(j, memory.get("gpu"))
        budget[g] = size if size is not None else int(free_bytes(g) * 0.9)
    if "cpu" in memory:
        budget["cpu"] = memory["cpu"]
    return Placement(f"cuda:{gpus[0]}", device_map, budget, gpus)


def local_only(name: str) -> bool:
    """Whether defense ``name`` (parts joined by ``+`` for a composition) needs the model's weights.

    The defense catalogue (``vlmshield.defenses.info.DEFENSE_INFO``, ``local_only``) decides where it
    lists the defense; otherwise only :data:`REMOTE_DEFENSES` run remotely.
    """
    import importlib

    try:
        catalogue: dict[str, Any] = importlib.import_module("vlmshield.defenses.info").DEFENSE_INFO
    except (ImportError, AttributeError):
        catalogue = {}
    for part in (p.strip() for p in name.split("+")):
        info = catalogue.get(part)
        needs_weights = bool(info.local_only) if info is not None else part not in REMOTE_DEFENSES
        if needs_weights:
            return True
    return False


def check_remote_defenses(model: str, defenses: Sequence[Any]) -> None:
    """Refuse, on one line, a defense that needs the model's weights when the model is remote.

    ``defenses`` are :class:`~vlmshield.eval.plan.DefenseEntry` objects (see :func:`local_only`).
    """
    for entry in defenses:
        d = entry.defense
        if local_only(str(d.name)):
            raise UserInputError(
                f"defense {entry.label!r} needs the model's logits and hidden states, which the remote model "
                f"{model} does not expose; evaluate it on a local checkpoint (--model PATH), or use defenses "
                f"that only generate (e.g. {', '.join(REMOTE_DEFENSES)}) with a remote model"
            )
        cfg = getattr(d, "config", None)
        if d.name == "ecso" and getattr(cfg, "check_parse", None) == "logits":
            raise UserInputError(
                f"defense {entry.label!r}: check_parse=logits needs a local model; use check_parse=first_word "
                f"(or auto) with the remote model {model}"
            )


__all__ = [
    "DEVICE_MAP_STRATEGIES",
    "ORDERS",
    "REMOTE_DEFENSES",
    "Order",
    "Placement",
    "ScaleOptions",
    "check_remote_defenses",
    "local_only",
    "parse_device_map",
    "parse_max_memory",
    "placement_for_rank",
    "scale_options",
]
