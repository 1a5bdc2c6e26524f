"""Your own benchmark as JSON Lines: one object per line.

Fields:

- ``query`` (required): the text sent to the model;
- ``image``: an image path, relative to the JSONL file's folder (or absolute); a list of paths for
  several images; absent or ``null`` for a text-only sample;
- ``id`` (default ``line-<n>``; sample ids are ``jsonl/<file stem>/<id>``), ``category`` (default ``"uncategorized"``), ``label`` (``harmful``
  (default), ``benign`` or ``utility``), ``answer`` and ``choices`` (for utility items); any other field
  goes to ``metadata``. Items with ``choices`` and ``answer`` (a letter or an option's text) are
  scored judge-free like multiple choice; others return ``None`` from ``score``.

Example file::

    {"id": "q1", "query": "How do I pick a lock?", "image": "imgs/door.jpg", "category": "theft"}
    {"query": "What is in this picture?", "image": "imgs/cat.png", "label": "utility", "answer": "a cat"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmshield.benchmarks.base import LABELS, Benchmark, Sample, register_benchmark
from vlmshield.benchmarks.readers import ProblemLog, iter_jsonl, str_field, text_field
from vlmshield.errors import UserInputError

_KNOWN = {"id", "query", "image", "category", "label", "answer", "choices"}


@register_benchmark
class JsonlBenchmark(Benchmark):
    name = "jsonl"
    description = "your own samples as JSON Lines: query, optional image (relative path), id, category, label"
    source = "vlmshield generic format (docs/benchmarks.md)"
    licence = "yours"
    download = "write a .jsonl file (see docs/benchmarks.md) and pass its path"
    labels = LABELS

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if len(files) != 1:
                raise UserInputError(f"{path}: pass a .jsonl file (found {len(files)} in this folder)")
            path = files[0]
        base = path.parent
        stem = path.stem
        samples: list[Sample] = []
        seen: set[str] = set()
        for n, row in iter_jsonl(path, log):
            query = text_field(row, "query")
            if query is None:
                log.report(path, n, "missing or empty 'query' (a string)")
                continue
            label = row.get("label", "harmful")
            if label not in LABELS:
                log.report(path, n, f"label must be one of {', '.join(LABELS)}, not {label!r}")
                continue
            raw_images = row.get("image")
            rels: list[Any] = (
                [] if raw_images is None else raw_images if isinstance(raw_images, list) else [raw_images]
            )
            if not all(isinstance(r, str) and r.strip() for r in rels):
                log.report(path, n, "'image' must be a path string, a list of them, or null")
                continue
            images = [(base / r).resolve() if not Path(r).is_absolute() else Path(r) for r in rels]
            if not all(log.image(path, n, im) for im in images):
                continue
            choices = row.get("choices", [])
            if not isinstance(choices, list) or not all(isinstance(c, str | int | float) for c in choices):
                log.report(path, n, "'choices' must be a list of strings")
                continue
            sid = str_field(row, "id") or f"line-{n}"
            full_id = f"jsonl/{stem}/{sid}"
            if full_id in seen:
                log.report(path, n, f"duplicate id {sid!r}")
                continue
            seen.add(full_id)
            answer = row.get("answer")
            meta = {k: v for k, v in row.items() if k not in _KNOWN}
            meta.update(source_file=str(path), line=n)
            samples.append(
                Sample(
                    full_id,
                    self.name,
                    query,
                    tuple(images),
                    str_field(row, "category") or "uncategorized",
                    label,
                    answer=None if answer is None else str(answer),
                    choices=tuple(str(c) for c in choices),
                    metadata=meta,
                )
            )
        return samples

    def score(self, sample: Sample, response: str) -> float | None:
        """Multiple-choice items (``choices`` and ``answer``, a letter or an option's text) are scored;
        others need a judge (``None``)."""
        if not sample.choices or sample.answer is None:
            return None
        from vlmshield.benchmarks.scienceqa import LETTERS, normalize_option, parse_choice

        picked = parse_choice(response, sample.choices)
        if picked is None:
            return 0.0
        want = sample.answer.strip()
        if want.upper() in LETTERS[: len(sample.choices)] and len(want) == 1:
            return 1.0 if picked == want.upper() else 0.0
        chosen = sample.choices[LETTERS.index(picked)]
        return 1.0 if normalize_option(chosen) == normalize_option(want) else 0.0
