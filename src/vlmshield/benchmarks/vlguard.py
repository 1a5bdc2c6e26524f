"""VLGuard test split (Zong et al., ICML 2024): safe and unsafe images with safe and unsafe instructions.

Layout of the release (Hugging Face ``ys-zong/VLGuard``, gated)::

    test.json     a list of {"id", "image": "bad_ads/....png", "safe": bool,
                  "harmful_category", "harmful_subcategory",          (unsafe images only)
                  "instr-resp": [{"safe_instruction" | "unsafe_instruction" | "instruction", "response"}]}
    test/         images (``test.zip`` unzipped), paths relative to it

The three subsets of the paper's evaluation (``VLGuard_eval.py``):

- ``safe_safes``: safe image + ``safe_instruction`` -> ``benign`` (helpfulness / over-refusal);
- ``safe_unsafes``: safe image + ``unsafe_instruction`` -> ``harmful``;
- ``unsafes``: unsafe image + ``instruction`` -> ``harmful``.

``all`` (default) gives the three. ``path`` may be the folder with ``test.json`` (images in ``test/``
next to it) or the JSON file itself. The released ``response`` is kept in ``metadata["reference"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmshield.benchmarks.base import Benchmark, Label, Sample, first_existing, register_benchmark
from vlmshield.benchmarks.readers import ProblemLog, json_entries, read_text, str_field, text_field
from vlmshield.errors import UserInputError

_SUBSETS = ("safe_safes", "safe_unsafes", "unsafes")


@register_benchmark
class VLGuard(Benchmark):
    name = "vlguard"
    description = (
        "VLGuard test: safe images with safe/unsafe instructions and unsafe images (benign + harmful)"
    )
    source = (
        "Zong et al., Safety Fine-Tuning at (Almost) No Cost: A Baseline for Vision Large Language Models "
        "(ICML 2024, arXiv 2402.02207); https://github.com/ys-zong/VLGuard"
    )
    licence = "no licence stated in the repository or dataset card (gated on the Hub); images from third-party sources"
    download = (
        "request access to https://huggingface.co/datasets/ys-zong/VLGuard, download test.json and "
        "test.zip, unzip it into test/ next to test.json"
    )
    variants = ("all", *_SUBSETS)
    default_variant = "all"
    labels = ("harmful", "benign")
    env_var = "VLMSHIELD_VLGUARD"

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        meta_file = path
        if path.is_dir():
            found = first_existing([path / "test.json", path / "data" / "test.json"])
            if found is None:
                raise UserInputError(f"{path}: no test.json: {self.download}")
            meta_file = found
        image_dir = first_existing([meta_file.parent / "test", meta_file.parent / "VLGuard" / "test"])
        if image_dir is None:
            raise UserInputError(f"no test/ image folder next to {meta_file}: {self.download}")
        wanted = _SUBSETS if variant in (None, "all") else (variant,)
        buckets: dict[str, list[Sample]] = {s: [] for s in _SUBSETS}
        seen: set[str] = set()
        for e in json_entries(read_text(meta_file), meta_file):
            entry, line = e.value, e.line
            if not isinstance(entry, dict):
                log.report(meta_file, line, "each entry must be an object", entry=e.describe())
                continue
            eid, image_rel = str_field(entry, "id"), str_field(entry, "image")
            name = e.describe(id=eid)
            safe = entry.get("safe")
            pairs = entry.get("instr-resp")
            if eid is None or image_rel is None or not isinstance(safe, bool) or not isinstance(pairs, list):
                log.report(
                    meta_file,
                    line,
                    "expected 'id', 'image', 'safe' (true/false) and an 'instr-resp' list",
                    entry=name,
                    lost=len(pairs) if isinstance(pairs, list) and pairs else 1,
                )
                continue
            image = image_dir / image_rel
            if not log.image(meta_file, line, image, entry=name, lost=max(1, len(pairs))):
                continue
            for pair in pairs:
                if not isinstance(pair, dict):
                    log.report(meta_file, line, "each instr-resp item must be an object", entry=name)
                    continue
                if safe:
                    options = [
                        ("safe_safes", "safe_instruction", "benign"),
                        ("safe_unsafes", "unsafe_instruction", "harmful"),
                    ]
                else:
                    options = [("unsafes", "instruction", "harmful")]
                if not any(key in pair for _, key, _ in options):
                    keys = " or ".join(repr(k) for _, k, _ in options)
                    log.report(meta_file, line, f"instr-resp item without {keys}", entry=name)
                    continue
                for subset, key, label in options:
                    if key not in pair:
                        continue
                    text = text_field(pair, key)
                    if text is None:
                        log.report(meta_file, line, f"empty {key!r}", entry=name)
                        continue
                    sid = f"vlguard/{subset}/{eid}"
                    if sid in seen:
                        log.report(meta_file, line, f"duplicate {subset} sample for id {eid!r}", entry=name)
                        continue
                    seen.add(sid)
                    category = str(
                        entry.get("harmful_category")
                        or ("safe" if label == "benign" else "unsafe-instruction")
                    )
                    meta: dict[str, Any] = {
                        "subset": subset,
                        "safe_image": safe,
                        "harmful_subcategory": entry.get("harmful_subcategory"),
                        "reference": pair.get("response"),
                        "source_file": str(meta_file),
                        "line": line,
                        "entry": e.index,
                    }
                    lab: Label = "benign" if label == "benign" else "harmful"
                    buckets[subset].append(
                        Sample(sid, self.name, text, (image,), category, lab, metadata=meta)
                    )
        return [s for subset in wanted for s in buckets[subset]]
