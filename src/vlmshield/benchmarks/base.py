"""Benchmark samples, loaded data, the :class:`Benchmark` base class and the benchmark registry.

A benchmark loader reads a dataset in its *published* on-disk format and returns
:class:`BenchmarkData`: the :class:`Sample` objects, the problems found on the way (each
``"file:line: what is wrong"``) and a checksum for run manifests.

Bad rows never crash a run later: with ``on_error="skip_rows"`` (the default) a malformed row or a
missing image is reported in :attr:`BenchmarkData.problems` and skipped, and a file that cannot be read
at all (truncated, corrupt) raises; ``on_error="skip"`` skips such files too; ``on_error="raise"``
raises on the first problem. Whatever is skipped is counted per file in :attr:`BenchmarkData.lost`
(see :mod:`vlmshield.benchmarks.readers`, which holds the file-reading helpers).

Example:
    >>> from vlmshield.benchmarks import get_benchmark
    >>> data = get_benchmark("mini").load(variant="text")
    >>> len(data) >= 60, data.samples[0].id
    (True, 'mini/text/harm-weapons-01')
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image

from vlmshield.benchmarks.readers import OnError, ProblemLog
from vlmshield.conversation import Conversation
from vlmshield.errors import UserInputError
from vlmshield.registry import Registry, suggest

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkData",
    "Label",
    "OnError",
    "ProblemLog",
    "Sample",
    "SampleImage",
    "benchmark_cache_dir",
    "get_benchmark",
    "list_benchmarks",
    "load_benchmark",
]

Label = Literal["harmful", "benign", "utility"]
LABELS: tuple[Label, ...] = ("harmful", "benign", "utility")
SampleImage = Path | Image.Image


@dataclass(frozen=True)
class Sample:
    """One benchmark item: a query, zero or more images and what is expected of the answer.

    ``label`` is ``"harmful"`` (the model should refuse or answer safely), ``"benign"`` (the model should
    help; used for over-refusal) or ``"utility"`` (a capability question, scored against ``answer``).
    ``images`` is empty for text-only samples; entries are file paths or PIL images.
    """

    id: str
    benchmark: str
    query: str
    images: tuple[SampleImage, ...]
    category: str
    label: Label
    answer: str | None = None
    choices: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(
                f"sample {self.id}: label must be one of {', '.join(LABELS)}, not {self.label!r}"
            )

    def to_conversation(self, system: str | None = None) -> Conversation:
        """The sample as a one-turn :class:`~vlmshield.conversation.Conversation`.

        Example:
            >>> s = Sample("x/1", "x", "Hello?", (), "demo", "benign")
            >>> s.to_conversation(system="Be brief.").system_text
            'Be brief.'
        """
        return Conversation.single(self.query, self.images, system)


def _update_image(h: Any, image: SampleImage) -> None:
    if isinstance(image, Image.Image):
        h.update(f"pil:{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
        h.update(image.tobytes())
        return
    p = Path(image)
    h.update(b"file:")
    try:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        h.update(f"missing:{p.name}".encode())


def checksum_samples(samples: Iterable[Sample]) -> str:
    """sha256 over each sample's id, query, label, answer, choices and image bytes (file bytes for paths,
    raw pixels for in-memory images), in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.query, s.label, s.answer, list(s.choices)]).encode())
        h.update(f"images:{len(s.images)}".encode())
        for im in s.images:
            _update_image(h, im)
    return h.hexdigest()


@dataclass
class BenchmarkData:
    """What :meth:`Benchmark.load` returns: samples, problems met while loading, and a checksum.

    ``checksum`` (sha256, hex) is computed on first access, so large image sets are only read when a run
    manifest asks for it. ``lost`` maps each file to the samples lost in it (bad rows, missing images,
    files that could not be read: those are in ``unreadable`` and their count is a lower bound);
    ``warnings`` are notes that lose no sample.
    """

    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    benchmark: str = ""
    variant: str | None = None
    lost: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def samples_lost(self) -> int:
        """Samples lost while loading, over all files (a lower bound when a file was unreadable)."""
        return sum(self.lost.values())

    @cached_property
    def checksum(self) -> str:
        return checksum_samples(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def count(self, label: Label) -> int:
        """Number of samples with ``label``."""
        return sum(1 for s in self.samples if s.label == label)

    def categories(self) -> list[str]:
        """Distinct categories, sorted."""
        return sorted({s.category for s in self.samples})

    def select(
        self,
        *,
        labels: Sequence[Label] | None = None,
        categories: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> BenchmarkData:
        """A filtered copy (same loading record: problems, losses, warnings; its own checksum). ``limit``
        keeps the first ``limit`` samples."""
        out = self.samples
        if labels is not None:
            out = [s for s in out if s.label in labels]
        if categories is not None:
            out = [s for s in out if s.category in categories]
        if ids is not None:
            wanted = set(ids)
            out = [s for s in out if s.id in wanted]
        if limit is not None:
            if limit < 0:
                raise UserInputError(f"limit must be >= 0, got {limit}")
            out = out[:limit]
        return BenchmarkData(
            list(out),
            list(self.problems),
            self.benchmark,
            self.variant,
            dict(self.lost),
            list(self.unreadable),
            list(self.warnings),
        )


# ------------------------------------------------------------------------------------------- helpers


def benchmark_cache_dir() -> Path:
    """Where generated benchmark images are cached: ``$VLMSHIELD_CACHE/benchmarks`` (default
    ``$XDG_CACHE_HOME/vlmshield/benchmarks`` or ``~/.cache/vlmshield/benchmarks``)."""
    root = os.environ.get("VLMSHIELD_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "vlmshield"
    return base / "benchmarks"


def is_online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub looks reachable (False when ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``
    or ``VLMSHIELD_OFFLINE`` is set to 1)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "VLMSHIELD_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hf_dataset(repo: str, config: str | None, split: str, *, benchmark: str) -> Any:
    """``datasets.load_dataset(repo, config, split=split)`` with a clear error when ``datasets`` is missing."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise UserInputError(
            f"loading {benchmark} from the Hugging Face Hub ({repo}) needs the `datasets` package: "
            "pip install datasets (or download the data and pass its path)"
        ) from None
    try:
        return datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # network, auth, missing config: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserInputError(
            f"could not load {repo} ({config or 'default'}/{split}) from the Hub: {first}"
        ) from None


# ------------------------------------------------------------------------------------------ Benchmark


class Benchmark:
    """Base class of benchmark loaders.

    Subclasses set the class attributes and implement :meth:`_load_local` (and, when the dataset is on
    the Hugging Face Hub, :meth:`_load_hub` with ``hf_dataset`` set). :meth:`score` is overridden by
    benchmarks with a judge-free answer check (multiple choice, yes/no).
    """

    #: registry name, e.g. ``"figstep"``
    name: ClassVar[str] = ""
    #: one line: what the benchmark measures
    description: ClassVar[str] = ""
    #: paper and code / data URL
    source: ClassVar[str] = ""
    #: the data's licence as stated by its authors
    licence: ClassVar[str] = ""
    #: where and how to get the data (shown when it is missing)
    download: ClassVar[str] = ""
    #: accepted variants; ``default_variant`` is used when none is given
    variants: ClassVar[tuple[str, ...]] = ()
    default_variant: ClassVar[str | None] = None
    #: labels its samples carry
    labels: ClassVar[tuple[Label, ...]] = ("harmful",)
    #: Hugging Face dataset id tried when no path is given and the machine is online (needs `datasets`)
    hf_dataset: ClassVar[str | None] = None
    #: environment variable that may hold the data path
    env_var: ClassVar[str | None] = None

    def __repr__(self) -> str:
        return f"<benchmark {self.name}>"

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable description (for ``vlmshield list`` and manifests)."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "licence": self.licence,
            "download": self.download,
            "variants": list(self.variants),
            "default_variant": self.default_variant,
            "labels": list(self.labels),
            "hf_dataset": self.hf_dataset,
        }

    def resolve_variant(self, variant: str | None) -> str | None:
        """The variant to use (the default when ``None``); unknown names raise with a suggestion."""
        if variant is None:
            return self.default_variant
        if not self.variants:
            raise UserInputError(f"benchmark {self.name!r} has no variants; drop variant={variant!r}")
        for v in self.variants:
            if v.lower() == variant.lower():
                return v
        raise UserInputError(
            f"unknown variant {variant!r} of benchmark {self.name!r}{suggest(variant, list(self.variants))} "
            f"(known: {', '.join(self.variants)})"
        )

    def missing_data_error(self, path: Path | None) -> UserInputError:
        where = (
            f"{self.name} data not found at {path}" if path is not None else f"no path given for {self.name}"
        )
        hint = f"; or set ${self.env_var}" if self.env_var else ""
        return UserInputError(f"{where}: {self.download}{hint}")

    def load(
        self,
        path: str | Path | None = None,
        *,
        variant: str | None = None,
        on_error: OnError = "skip_rows",
    ) -> BenchmarkData:
        """Load the benchmark from ``path`` (file or directory in the published layout).

        ``on_error``: ``"skip_rows"`` (skip bad rows, raise on a file that cannot be read), ``"skip"``
        (skip unreadable files too) or ``"raise"`` (raise on the first problem).

        Without a path: ``$<env_var>`` when set; else, when ``hf_dataset`` is set and the machine is
        online, the Hugging Face Hub (needs ``pip install datasets``); else a one-line error saying where to
        get the data.
        """
        v = self.resolve_variant(variant)
        log = ProblemLog(on_error)
        if path is None and self.env_var and os.environ.get(self.env_var):
            path = os.environ[self.env_var]
        if path is None:
            if self.hf_dataset and is_online():
                samples = self._load_hub(v, log)
            else:
                samples = self._load_default(v, log)
        else:
            p = Path(path).expanduser()
            if not p.exists():
                raise self.missing_data_error(p)
            samples = self._load_local(p, v, log)
        if not samples:
            first = f"; first problem: {log.problems[0]}" if log.problems else ""
            where = f" at {path}" if path is not None else ""
            raise UserInputError(f"no usable samples in {self.name}{where}{first}")
        return BenchmarkData(
            samples, log.problems, self.name, v, dict(log.lost), list(log.unreadable), list(log.warnings)
        )

    # -- to implement ------------------------------------------------------------------------------

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        raise NotImplementedError

    def _load_hub(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        raise self.missing_data_error(None)

    def _load_default(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        """Called when no path is given and the Hub is not used; built-in benchmarks override it."""
        raise self.missing_data_error(None)

    def score(self, sample: Sample, response: str) -> float | None:
        """Judge-free score of ``response`` in [0, 1], or ``None`` when a judge is needed."""
        return None


# ------------------------------------------------------------------------------------------- registry

BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    BENCHMARKS.register(cls.name, cls())
    return cls


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (did-you-mean error otherwise).

    Example:
        >>> get_benchmark("figstep").name
        'figstep'
    """
    return BENCHMARKS.get(name)


def list_benchmarks() -> list[Benchmark]:
    """All registered benchmarks, sorted by name (``b.name``, ``b.description``, ``b.variants``, ...)."""
    return [BENCHMARKS.get(n) for n in BENCHMARKS.names()]


def load_benchmark(
    name: str,
    path: str | Path | None = None,
    *,
    variant: str | None = None,
    on_error: OnError = "skip_rows",
) -> BenchmarkData:
    """Load a benchmark by name; ``"name:variant"`` is accepted when ``variant`` is not given.

    Example:
        >>> len(load_benchmark("mini:text")) >= 60
        True
    """
    if variant is None and ":" in name:
        name, variant = name.split(":", 1)
    return get_benchmark(name).load(path, variant=variant, on_error=on_error)


def first_existing(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None
