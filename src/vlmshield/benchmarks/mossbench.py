"""MOSSBench (Li et al., 2024): 300 benign queries whose images look risky (over-refusal), and its
harmful contrast set.

Layout of github.com/xirui-li/MOSSBench, which ships the images (``path`` is the repository root, one
of its data folders, or an ``information.json``)::

    data/images_information/information.json   {"1": {"image": "images/1.png", "question", "pid",
                                                       "short description", "description",
                                                       "metadata": {"over": "type 1", "human", "child",
                                                                    "syn", "ocr", "harm": [...]}}}
    data/images/1.png ...
    data_contrast/images_information/information.json   the same schema, "metadata": {"over"} only
    data_contrast/images/1.png ...

Variants: ``oversensitivity`` (default; ``data/``, 300 ``benign`` samples, ids ``mossbench/<pid>``) and
``contrast`` (``data_contrast/``, 244 harmful counterparts of those queries, ``harmful``, ids
``mossbench/contrast/<pid>``). The category is the stimulus type (``type 1`` Exaggerated Risk, ``type 2``
Negated Harm, ``type 3`` Counterintuitive Interpretation). A ``data_contrast`` folder loaded as
``oversensitivity`` is an error (its queries are harmful); a file whose entries carry none of the benign
set's annotations (``human``, ``child``, ``syn``, ``ocr``, ``harm``) loads with a warning that it looks
like the contrast set. Image paths are relative to the data folder; a missing ``.png`` falls back to
the same name with ``.jpg`` / ``.webp``. Hub route (``oversensitivity`` only): ``AIcell/MOSSBench``,
config ``oversensitivity``, split ``train`` (``decoded_image`` is the image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmshield.benchmarks.base import (
    Benchmark,
    Label,
    Sample,
    first_existing,
    load_hf_dataset,
    register_benchmark,
)
from vlmshield.benchmarks.readers import ProblemLog, json_entries, read_text, str_field, text_field
from vlmshield.errors import UserInputError

#: annotations only the benign (oversensitivity) set carries in ``metadata``
BENIGN_ANNOTATIONS = ("human", "child", "syn", "ocr", "harm")
_FOLDERS = {"oversensitivity": "data", "contrast": "data_contrast"}

STIMULI = {
    "type 1": "Exaggerated Risk",
    "type 2": "Negated Harm",
    "type 3": "Counterintuitive Interpretation",
}


def _category(meta: Any) -> str:
    over = str(meta.get("over", "")).strip().lower() if isinstance(meta, dict) else ""
    return STIMULI.get(over, over or "unknown")


@register_benchmark
class MOSSBench(Benchmark):
    name = "mossbench"
    description = (
        "MOSSBench: 300 benign queries with seemingly harmful images (over-refusal); contrast = 244 "
        "harmful counterparts"
    )
    source = (
        "Li et al., MOSSBench: Is Your Multimodal Language Model Oversensitive to Safe Queries? "
        "(arXiv 2406.17806); https://github.com/xirui-li/MOSSBench"
    )
    licence = "CC BY-SA 4.0 (test use only; training on it is prohibited by its authors)"
    download = "git clone https://github.com/xirui-li/MOSSBench (questions and images are in data/ and data_contrast/)"
    variants = ("oversensitivity", "contrast")
    default_variant = "oversensitivity"
    labels = ("benign", "harmful")
    hf_dataset = "AIcell/MOSSBench"
    env_var = "VLMSHIELD_MOSSBENCH"

    def _find(self, path: Path, variant: str) -> Path:
        """The ``information.json`` of ``variant`` under ``path`` (or ``path`` itself)."""
        if path.is_file():
            return path
        folder = _FOLDERS[variant]
        candidates = [path / folder, path] if variant == "contrast" else [path, path / folder]
        found = first_existing([d / "images_information" / "information.json" for d in candidates])
        if found is None:
            raise UserInputError(f"{path}: no {folder}/images_information/information.json: {self.download}")
        return found

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        variant = variant or "oversensitivity"
        info = self._find(path, variant)
        data_dir = info.parent.parent
        contrast = variant == "contrast"
        if not contrast and data_dir.name == _FOLDERS["contrast"]:
            raise UserInputError(
                f"{info} is MOSSBench's harmful contrast set ({data_dir.name}/), not its benign queries: "
                "load it with variant 'contrast' (label harmful), or pass the data/ folder"
            )
        label: Label = "harmful" if contrast else "benign"
        samples: list[Sample] = []
        annotated = 0
        for e in json_entries(read_text(info), info):
            entry, line = e.value, e.line
            name = e.describe()
            if not isinstance(entry, dict):
                log.report(info, line, "each entry must be an object", entry=name)
                continue
            attrs = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else None
            if attrs is not None and any(k in attrs for k in BENIGN_ANNOTATIONS):
                annotated += 1
            question, image_rel = text_field(entry, "question"), str_field(entry, "image")
            if question is None or image_rel is None:
                log.report(info, line, "missing or empty 'question' or 'image'", entry=name)
                continue
            image = data_dir / image_rel
            if not image.is_file():
                image = first_existing([image.with_suffix(ext) for ext in (".jpg", ".webp", ".png")]) or image
            if not log.image(info, line, image, entry=name):
                continue
            pid = str_field(entry, "pid") or str(e.key)
            meta = {
                "pid": pid,
                "stimulus": attrs.get("over") if attrs is not None else None,
                "attributes": entry.get("metadata"),
                "short_description": entry.get("short description"),
                "description": entry.get("description"),
                "source_file": str(info),
                "line": line,
                "entry": e.index,
            }
            sid = f"mossbench/contrast/{pid}" if contrast else f"mossbench/{pid}"
            samples.append(Sample(sid, self.name, question, (image,), _category(attrs), label, metadata=meta))
        if not contrast and samples and annotated == 0:
            log.warn(
                f"{info}: no entry carries the benign set's annotations ({', '.join(BENIGN_ANNOTATIONS)}); "
                "this looks like MOSSBench's harmful contrast set (data_contrast/), loaded here as benign: "
                "use variant 'contrast' if it is"
            )
        if contrast and samples and annotated == len(samples):
            log.warn(
                f"{info}: every entry carries the benign set's annotations; this looks like MOSSBench's "
                "benign queries (data/), loaded here as harmful: use variant 'oversensitivity' if it is"
            )
        return samples

    def _load_hub(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        if variant == "contrast":
            raise UserInputError(f"the contrast set needs a local copy: {self.download}")
        ds = load_hf_dataset(self.hf_dataset or "", "oversensitivity", "train", benchmark=self.name)
        samples: list[Sample] = []
        for i, row in enumerate(ds):
            question = text_field(row, "question")
            image = row.get("decoded_image")
            if question is None or image is None:
                log.report(f"hf://{self.hf_dataset}", i, "missing question or decoded_image")
                continue
            pid = str(row.get("pid", i))
            samples.append(
                Sample(
                    f"mossbench/{pid}",
                    self.name,
                    question,
                    (image,),
                    _category(row.get("metadata")),
                    "benign",
                    metadata={"pid": pid, "attributes": row.get("metadata")},
                )
            )
        return samples
