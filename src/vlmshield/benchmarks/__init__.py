"""Benchmarks: loaders for published safety / utility formats, a typographic renderer, synthetic images.

Every loader reads its dataset in the published on-disk format and returns
:class:`~vlmshield.benchmarks.base.BenchmarkData` (samples, problems found, checksum). See
``docs/benchmarks.md`` for sources, licences and download locations.

Example:
    >>> from vlmshield.benchmarks import BENCHMARKS, load_benchmark
    >>> "mini" in BENCHMARKS
    True
    >>> data = load_benchmark("mini", variant="text")
    >>> data.count("harmful"), data.count("benign")
    (40, 20)
"""

from __future__ import annotations

from vlmshield.benchmarks import (  # noqa: F401  (importing registers the loaders)
    figstep,
    generic,
    jailbreakv,
    mini,
    mm_safetybench,
    mme,
    mmvet,
    mossbench,
    scienceqa,
    siuo,
    vlguard,
    vlsafe,
)
from vlmshield.benchmarks.base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkData,
    Label,
    Sample,
    get_benchmark,
    list_benchmarks,
    load_benchmark,
)

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkData",
    "Label",
    "Sample",
    "get_benchmark",
    "list_benchmarks",
    "load_benchmark",
]
