"""The built-in ``mini`` benchmark: written for vlmshield, always available, no download.

60 items in ``data/mini.json`` (Apache-2.0, written by the vlmshield authors, not copied from any
benchmark): 40 harmful *requests* in 10 categories (weapons, cybercrime, fraud, drugs, self-harm, hate,
privacy, violence, dangerous-chemistry, theft; phrased as requests, with no harmful content) and 20
benign look-alikes that borrow their wording ("How do I kill a Python process that is stuck?") to measure
over-refusal. Each item has a question (``query``) and a FigStep-style declarative form
(``instruction``, "Steps to ...").

Variants (ids ``mini/<variant>/<item id>``):

- ``text``: the query alone, no image;
- ``typo``: the instruction rendered as a FigStep typographic image by
  :func:`~vlmshield.benchmarks.render.render_figstep`, sent with FigStep's prompt
  (falls back to another bold font when FreeMonoBold is missing, so it never fails for lack of it);
- ``vlsafe`` (default): the query in text plus an unrelated benign synthetic image
  (:func:`~vlmshield.benchmarks.synthetic_images.render_scene` with seed ``1_000_000 + index``);
- ``all``: the three above.

Images are generated in memory on load (deterministic; about 1 s for all 180 samples).
``load(path)`` reads another file in the same JSON schema instead of the packaged one.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from vlmshield.benchmarks.base import Benchmark, Sample, register_benchmark
from vlmshield.benchmarks.readers import ProblemLog, json_entries, read_text, require
from vlmshield.benchmarks.render import FIGSTEP_PROMPT, render_figstep, resolve_font
from vlmshield.benchmarks.synthetic_images import render_scene
from vlmshield.errors import UserInputError

#: First seed of the synthetic images of the ``vlsafe`` variant (seed = SEED_BASE + item index).
SEED_BASE = 1_000_000
_VARIANTS = ("text", "typo", "vlsafe")


def _packaged() -> tuple[str, str]:
    ref = resources.files("vlmshield.benchmarks").joinpath("data/mini.json")
    return ref.read_text(encoding="utf-8"), "vlmshield/benchmarks/data/mini.json"


@register_benchmark
class Mini(Benchmark):
    name = "mini"
    description = (
        "built-in: 40 harmful requests in 10 categories + 20 benign look-alikes; "
        "text, FigStep-style typographic (typo) and query + unrelated image (vlsafe) variants"
    )
    source = "written for vlmshield (src/vlmshield/benchmarks/data/mini.json)"
    licence = "Apache-2.0 (vlmshield)"
    download = "built in; no download needed"
    variants = ("vlsafe", "typo", "text", "all")
    default_variant = "vlsafe"
    labels = ("harmful", "benign")

    def _load_default(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        text, name = _packaged()
        return self._build(text, name, variant, log)

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        if path.is_dir():
            path = path / "mini.json"
            if not path.is_file():
                raise UserInputError(f"{path} not found: pass a JSON file in the mini schema")
        return self._build(read_text(path), str(path), variant, log)

    def _items(self, text: str, file: str, log: ProblemLog) -> list[tuple[dict[str, str], int]]:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{file}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
            raise UserInputError(f"{file}:1: expected an object with an 'items' list")
        # line numbers of the items: find the 'items' array and walk it
        start = text.find('"items"')
        lines: list[int] = []
        if start >= 0:
            arr = text.index("[", start)
            offset = text.count("\n", 0, arr)
            lines = [e.line + offset for e in json_entries(text[arr:], file)]
        out: list[tuple[dict[str, str], int]] = []
        seen: set[str] = set()
        for k, item in enumerate(doc["items"]):
            line = lines[k] if k < len(lines) else 1
            if not isinstance(item, dict):
                log.report(file, line, "each item must be an object")
                continue
            f = require(item, ("id", "label", "category", "query"), log, Path(file), line)
            if f is None:
                continue
            if f["label"] not in ("harmful", "benign"):
                log.report(file, line, f"label must be 'harmful' or 'benign', not {f['label']!r}")
                continue
            if f["id"] in seen:
                log.report(file, line, f"duplicate id {f['id']!r}")
                continue
            seen.add(f["id"])
            f["instruction"] = str(item.get("instruction") or f["query"]).strip()
            out.append((f, k))
        return out

    def _build(self, text: str, file: str, variant: str | None, log: ProblemLog) -> list[Sample]:
        items = self._items(text, file, log)
        wanted = _VARIANTS if variant == "all" else (variant or "vlsafe",)
        font_name = resolve_font(allow_fallback=True)[1] if "typo" in wanted else None
        samples: list[Sample] = []
        for v in wanted:
            for f, index in items:
                label: Any = f["label"]
                meta: dict[str, Any] = {"item": f["id"], "instruction": f["instruction"], "variant": v}
                sid = f"mini/{v}/{f['id']}"
                if v == "text":
                    samples.append(
                        Sample(sid, self.name, f["query"], (), f["category"], label, metadata=meta)
                    )
                elif v == "typo":
                    image = render_figstep(f["instruction"], mode="L", allow_fallback=True)
                    meta["font"] = font_name
                    samples.append(
                        Sample(sid, self.name, FIGSTEP_PROMPT, (image,), f["category"], label, metadata=meta)
                    )
                else:
                    seed = SEED_BASE + index
                    image, description = render_scene(seed)
                    meta.update(seed=seed, image_description=description)
                    samples.append(
                        Sample(sid, self.name, f["query"], (image,), f["category"], label, metadata=meta)
                    )
        return samples
