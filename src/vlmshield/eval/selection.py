"""Benchmarks of an evaluation: ``NAME[:VARIANT][@PATH]`` arguments, loading, and the seeded
``--limit`` selection (see :func:`select_samples`).

Example:
    >>> parse_benchmark_arg("mini:text").label
    'mini:text'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError


@dataclass(frozen=True)
class BenchmarkRequest:
    """One ``NAME[:VARIANT][@PATH]`` argument."""

    name: str
    variant: str | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name


def parse_benchmark_arg(text: str, default_variant: str | None = None) -> BenchmarkRequest:
    """Parse ``NAME[:VARIANT][@PATH]``.

    Example:
        >>> parse_benchmark_arg("figstep:tiny@data/figstep")
        BenchmarkRequest(name='figstep', variant='tiny', path='data/figstep')
    """
    text = text.strip()
    spec, at, path = text.partition("@")
    name, _, variant = spec.partition(":")
    name, variant, path = name.strip(), variant.strip(), path.strip()
    if not name:
        raise UserInputError(f"bad benchmark {text!r}; write NAME[:VARIANT][@PATH], e.g. mini:text")
    if at and not path:
        raise UserInputError(f"benchmark {text!r}: nothing after '@'; write NAME@PATH")
    return BenchmarkRequest(name, variant or default_variant, path or None)


def split_commas(values: Sequence[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (empty parts dropped)."""
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


@dataclass
class BenchmarkSelection:
    """A loaded benchmark and the samples chosen from it."""

    request: BenchmarkRequest
    benchmark: Any  # vlmshield.benchmarks.Benchmark
    samples: list[Any]  # list[Sample]
    total: int
    checksum: str
    selection_checksum: str
    problems: list[str]
    variant: str | None
    lost: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def samples_lost(self) -> int:
        """Samples lost while loading (bad rows, missing images, unreadable files: a lower bound)."""
        return sum(self.lost.values())

    def notes(self) -> list[str]:
        """One-line notes for the console: warnings, and the samples lost per file (``N+`` where a file
        could not be read: the entries after the break cannot be counted)."""
        label = self.request.label
        out = [f"warning: {label}: {w}" for w in self.warnings]
        if self.lost:
            parts = []
            for file, n in list(self.lost.items())[:5]:
                skipped = file in self.unreadable
                parts.append(f"{Path(file).name} {n}{'+ (cannot be read, skipped)' if skipped else ''}")
            if len(self.lost) > 5:
                parts.append(f"and {len(self.lost) - 5} more files")
            total = f"{self.samples_lost}{'+' if self.unreadable else ''}"
            first = f"; first problem: {self.problems[0]}" if self.problems else ""
            out.append(f"note: {label}: {total} samples lost: {', '.join(parts)}{first}")
        elif self.problems:
            out.append(f"note: {label}: {len(self.problems)} problems (first: {self.problems[0]})")
        return out

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.request.name,
            "variant": self.variant,
            "path": str(Path(self.request.path).expanduser().resolve()) if self.request.path else None,
            "checksum": self.checksum,
            "selection_checksum": self.selection_checksum,
            "total_samples": self.total,
            "selected_samples": len(self.samples),
            "problems": len(self.problems),
            "samples_lost": self.samples_lost,
            "lost_by_file": {_absolute(f): n for f, n in self.lost.items()},
            "unreadable_files": [_absolute(f) for f in self.unreadable],
            "first_problem": self.problems[0] if self.problems else None,
            "warnings": list(self.warnings),
        }


def _absolute(file: str) -> str:
    """A local file path made absolute (the manifest must not depend on the working folder)."""
    return file if "://" in file else str(Path(file).expanduser().resolve())


def _rank_key(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def select_samples(
    samples: Sequence[Any], limit: int | None, seed: int, *, stratify: bool = True
) -> list[Any]:
    """The ``limit`` samples an evaluation with ``seed`` uses (all of them when ``limit`` is None).

    A seeded shuffle (by ``sha256(seed:id)``) within each label, ``limit`` shared between labels in
    proportion to their counts (largest remainders; ``stratify=False`` shuffles all together), and
    the result in the original order.

    Example:
        >>> from vlmshield.benchmarks import load_benchmark
        >>> s = load_benchmark("mini:text").samples
        >>> a = select_samples(s, 6, seed=1)
        >>> a == select_samples(s, 6, seed=1), a == select_samples(s, 6, seed=2)
        (True, False)
    """
    if limit is None or limit >= len(samples):
        return list(samples)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.label if stratify else "", []).append(i)
    total = len(samples)
    quotas = {k: limit * len(v) / total for k, v in groups.items()}
    take = {k: int(q) for k, q in quotas.items()}
    rest = limit - sum(take.values())
    for k in sorted(groups, key=lambda k: (-(quotas[k] - take[k]), k))[:rest]:
        take[k] += 1
    chosen: list[int] = []
    for k, idxs in groups.items():
        ranked = sorted(idxs, key=lambda i: _rank_key(seed, samples[i].id))
        chosen.extend(ranked[: take[k]])
    return [samples[i] for i in sorted(chosen)]


def load_selection(
    req: BenchmarkRequest, limit: int | None, seed: int, *, skip_bad: bool = False
) -> BenchmarkSelection:
    """Load ``req`` (bad rows skipped and counted; an unreadable file is an error unless ``skip_bad``)
    and select its samples."""
    from vlmshield.benchmarks import get_benchmark
    from vlmshield.benchmarks.base import checksum_samples

    bench = get_benchmark(req.name)
    data = bench.load(req.path, variant=req.variant, on_error="skip" if skip_bad else "skip_rows")
    chosen = select_samples(data.samples, limit, seed)
    return BenchmarkSelection(
        request=req,
        benchmark=bench,
        samples=chosen,
        total=len(data.samples),
        checksum=data.checksum,
        selection_checksum=checksum_samples(chosen),
        problems=list(data.problems),
        variant=data.variant,
        lost=dict(data.lost),
        unreadable=list(data.unreadable),
        warnings=list(data.warnings),
    )


__all__ = [
    "BenchmarkRequest",
    "BenchmarkSelection",
    "load_selection",
    "parse_benchmark_arg",
    "select_samples",
    "split_commas",
]
