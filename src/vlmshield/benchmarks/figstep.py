"""FigStep's SafeBench and SafeBench-Tiny, in the layout of github.com/ThuCCSLab/FigStep.

Layout (``path`` may be the repository root, its ``data/`` folder, or one of the CSV files)::

    data/question/safebench.csv            500 rows, 10 categories x 50 tasks
    data/question/SafeBench-Tiny.csv       50 rows, the tasks 1-5 of each category
    data/images/SafeBench/query_ForbidQI_{category_id}_{task_id}_6.png
    data/images/SafeBench-Tiny/query_ForbidQI_{category_id}_{task_id}_6.png

CSV columns: ``dataset, category_id, task_id, category_name, question, instruction``. The model gets
FigStep's typographic image of ``instruction`` plus :data:`~vlmshield.benchmarks.render.FIGSTEP_PROMPT`;
the ``*-text`` variants send the ``question`` with no image (the text-only baseline). Missing images are
re-rendered with :func:`~vlmshield.benchmarks.render.render_figstep` (cached as PNG under
:func:`~vlmshield.benchmarks.base.benchmark_cache_dir`), which needs the FreeMonoBold font.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vlmshield.benchmarks.base import (
    Benchmark,
    Sample,
    benchmark_cache_dir,
    first_existing,
    register_benchmark,
)
from vlmshield.benchmarks.readers import ProblemLog, iter_csv, require
from vlmshield.benchmarks.render import FIGSTEP_PROMPT, render_figstep
from vlmshield.errors import UserInputError

_CSV = {"safebench": "safebench.csv", "tiny": "SafeBench-Tiny.csv"}
_IMAGES = {"safebench": "SafeBench", "tiny": "SafeBench-Tiny"}
_COLUMNS = ("category_id", "task_id", "category_name", "question", "instruction")


def rendered_figstep_image(instruction: str, category_id: str, task_id: str) -> Path:
    """FigStep's image of ``instruction``, rendered once and cached as PNG."""
    digest = hashlib.sha256(instruction.encode()).hexdigest()[:10]
    out = benchmark_cache_dir() / "figstep" / f"query_ForbidQI_{category_id}_{task_id}_6-{digest}.png"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.png")
        render_figstep(instruction).save(tmp, format="PNG")
        tmp.replace(out)
    return out


@register_benchmark
class FigStep(Benchmark):
    name = "figstep"
    description = (
        "FigStep SafeBench: 500 harmful instructions in 10 categories as typographic images "
        "(tiny: 50); *-text variants send the question with no image"
    )
    source = (
        "Gong et al., FigStep: Jailbreaking Large Vision-Language Models via Typographic Visual Prompts "
        "(AAAI 2025, arXiv 2311.05608); https://github.com/ThuCCSLab/FigStep"
    )
    licence = "MIT (ThuCCSLab/FigStep)"
    download = (
        "git clone https://github.com/ThuCCSLab/FigStep and pass its data/ folder "
        "(question/safebench.csv, images/SafeBench/)"
    )
    variants = ("safebench", "tiny", "safebench-text", "tiny-text")
    default_variant = "safebench"
    labels = ("harmful",)
    env_var = "VLMSHIELD_FIGSTEP"

    def _locate(self, path: Path, subset: str) -> tuple[Path, Path | None, bool]:
        """(csv file, images folder or None, whether to keep only tasks 1-5)."""
        if path.is_file():
            csv_path = path
            root = path.parent.parent
            images = first_existing([root / "images" / _IMAGES[subset], root / "images" / "SafeBench"])
            return csv_path, images, subset == "tiny" and path.name == _CSV["safebench"]
        for root in (path, path / "data"):
            qdir = root / "question"
            if not qdir.is_dir():
                continue
            csv_path = qdir / _CSV[subset]
            only_tiny = False
            if not csv_path.is_file() and subset == "tiny" and (qdir / _CSV["safebench"]).is_file():
                csv_path, only_tiny = qdir / _CSV["safebench"], True
            if not csv_path.is_file():
                raise UserInputError(f"{csv_path} not found: {self.download}")
            images = first_existing([root / "images" / _IMAGES[subset], root / "images" / "SafeBench"])
            return csv_path, images, only_tiny
        raise self.missing_data_error(path)

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        assert variant is not None
        subset = variant.removesuffix("-text")
        text_only = variant.endswith("-text")
        csv_path, images_dir, only_tiny = self._locate(path, subset)
        samples: list[Sample] = []
        seen: set[str] = set()
        for line, row in iter_csv(csv_path, _COLUMNS, log):
            f = require(row, _COLUMNS, log, csv_path, line)
            if f is None:
                continue
            cat, task = f["category_id"], f["task_id"]
            if not (cat.isdigit() and task.isdigit()):
                log.report(csv_path, line, f"category_id and task_id must be integers, got {cat!r}, {task!r}")
                continue
            if only_tiny and int(task) > 5:
                continue
            sid = f"figstep/{variant}/{cat}-{task}"
            if sid in seen:
                log.report(csv_path, line, f"duplicate category_id/task_id {cat}/{task}")
                continue
            seen.add(sid)
            meta = {
                "category_id": int(cat),
                "task_id": int(task),
                "question": f["question"],
                "instruction": f["instruction"],
                "source_file": str(csv_path),
                "line": line,
            }
            if text_only:
                samples.append(
                    Sample(sid, self.name, row["question"], (), f["category_name"], "harmful", metadata=meta)
                )
                continue
            image = images_dir / f"query_ForbidQI_{cat}_{task}_6.png" if images_dir is not None else None
            if image is None or not image.is_file():
                image = rendered_figstep_image(f["instruction"], cat, task)
                meta["image_source"] = "rendered"
            else:
                meta["image_source"] = "dataset"
            samples.append(
                Sample(sid, self.name, FIGSTEP_PROMPT, (image,), f["category_name"], "harmful", metadata=meta)
            )
        return samples
