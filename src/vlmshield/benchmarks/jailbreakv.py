"""JailBreakV-28K (Luo et al., COLM 2024): jailbreak queries with images, as CSV + image folders.

Layout of the release (Hugging Face ``JailbreakV-28K/JailBreakV-28k``, folder ``JailBreakV_28K/``)::

    JailBreakV_28K.csv          28,000 rows
    mini_JailBreakV_28K.csv     280 rows (the ``mini`` variant, default)
    figstep/ llm_transfer_attack/ query_related/ ...   images, paths relative to the CSV's folder

CSV columns: ``id, jailbreak_query, redteam_query, format, policy, image_path, from, selected_mini,
transfer_from_llm``. The model gets ``jailbreak_query`` with the image at ``image_path``; ``policy`` is
the category. The query is kept exactly as published (leading and trailing whitespace included).
``path`` may be that folder, its parent, or a CSV file. When ``mini`` is asked for and
only the full CSV exists, rows with ``selected_mini`` true are kept.
"""

from __future__ import annotations

from pathlib import Path

from vlmshield.benchmarks.base import Benchmark, Sample, first_existing, register_benchmark
from vlmshield.benchmarks.readers import ProblemLog, iter_csv, require
from vlmshield.errors import UserInputError

_FILES = {"mini": "mini_JailBreakV_28K.csv", "full": "JailBreakV_28K.csv"}
_REQUIRED = ("id", "jailbreak_query", "policy", "image_path")


def _truthy(v: str | None) -> bool:
    return str(v or "").strip().lower() in ("true", "1", "yes")


@register_benchmark
class JailbreakV28K(Benchmark):
    name = "jailbreakv-28k"
    description = "JailBreakV-28K: jailbreak prompts (templates, persuasion, FigStep, query-relevant images); mini = 280"
    source = (
        "Luo et al., JailBreakV: A Benchmark for Assessing the Robustness of MultiModal Large Language Models "
        "against Jailbreak Attacks (COLM 2024, arXiv 2404.03027); "
        "https://huggingface.co/datasets/JailbreakV-28K/JailBreakV-28k"
    )
    licence = "MIT (dataset card); images come from several sources with their own terms"
    download = (
        "download the JailBreakV_28K/ folder (CSV files and image folders) from "
        "https://huggingface.co/datasets/JailbreakV-28K/JailBreakV-28k"
    )
    variants = ("mini", "full")
    default_variant = "mini"
    labels = ("harmful",)
    env_var = "VLMSHIELD_JAILBREAKV"

    def _locate(self, path: Path, variant: str) -> tuple[Path, bool]:
        """(csv file, whether to filter on selected_mini)."""
        if path.is_file():
            return path, False
        for root in (path, path / "JailBreakV_28K"):
            f = root / _FILES[variant]
            if f.is_file():
                return f, False
            if variant == "mini" and (root / _FILES["full"]).is_file():
                return root / _FILES["full"], True
        raise UserInputError(f"{path}: no {_FILES[variant]}: {self.download}")

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        assert variant is not None
        csv_path, filter_mini = self._locate(path, variant)
        root = csv_path.parent
        samples: list[Sample] = []
        seen: set[str] = set()
        for line, row in iter_csv(csv_path, _REQUIRED, log):
            if filter_mini and not _truthy(row.get("selected_mini")):
                continue
            f = require(row, _REQUIRED, log, csv_path, line)
            if f is None:
                continue
            sid = f"jailbreakv-28k/{variant}/{f['id']}"
            if sid in seen:
                log.report(csv_path, line, f"duplicate id {f['id']!r}")
                continue
            image = (
                first_existing([root / f["image_path"], root.parent / f["image_path"]])
                or root / f["image_path"]
            )
            if not log.image(csv_path, line, image):
                continue
            seen.add(sid)
            meta = {
                "format": row.get("format", ""),
                "from": row.get("from", ""),
                "redteam_query": row.get("redteam_query", ""),
                "transfer_from_llm": _truthy(row.get("transfer_from_llm")),
                "selected_mini": _truthy(row.get("selected_mini")),
                "source_file": str(csv_path),
                "line": line,
            }
            samples.append(
                Sample(
                    sid, self.name, row["jailbreak_query"], (image,), f["policy"], "harmful", metadata=meta
                )
            )
        return samples
