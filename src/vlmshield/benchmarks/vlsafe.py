"""VLSafe (Chen et al., DRESS, CVPR 2024): harmful queries paired with ordinary COCO images.

Published as JSON Lines on the Hugging Face Hub (``YangyiYY/LVLM_NLF``, folder ``VLSafe/``): the
evaluation split is ``harmlessness_examine.jsonl`` (older copies: ``VLSafe_harmlessness_examine.jsonl``),
one object per line with ``image_id`` (a COCO train2017 file name, e.g. ``000000391895.jpg``, or the
bare number), ``query`` and side fields such as ``caption`` (kept in the sample's metadata, like any
other published field; the query is kept exactly as published). The images are not redistributed: they come from COCO train2017
(https://cocodataset.org, ``train2017.zip``).

``path`` may be the JSONL file or a folder holding it. The COCO folder is looked for, in order, in
``$VLMSHIELD_COCO_DIR``, then ``train2017/``, ``images/``, ``coco/train2017/`` next to the JSONL file and one
level up. ``text`` sends the query with no image. This is the benchmark CMRM reports
(LLaVA-1.5-7B unsafe rate 61.53% -> 3.15%).
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmshield.benchmarks.base import Benchmark, Sample, first_existing, register_benchmark
from vlmshield.benchmarks.readers import ProblemLog, iter_jsonl, str_field, text_field
from vlmshield.errors import UserInputError

_FILES = ("harmlessness_examine.jsonl", "VLSafe_harmlessness_examine.jsonl")


def coco_file_name(image_id: str) -> str:
    """COCO train2017 file name for an id given as a number, a 2017 name or a 2014-style name."""
    name = Path(image_id).name
    stem = Path(name).stem
    if stem.isdigit():
        return f"{int(stem):012d}.jpg"
    if stem.startswith("COCO_") and stem.rsplit("_", 1)[-1].isdigit():
        return f"{int(stem.rsplit('_', 1)[-1]):012d}.jpg"
    return name


@register_benchmark
class VLSafe(Benchmark):
    name = "vlsafe"
    description = "VLSafe examine split: harmful queries paired with ordinary COCO images (CMRM's benchmark)"
    source = (
        "Chen et al., DRESS: Instructing Large Vision-Language Models to Align and Interact with Humans "
        "via Natural Language Feedback (CVPR 2024, arXiv 2311.10081); "
        "https://huggingface.co/datasets/YangyiYY/LVLM_NLF (VLSafe/)"
    )
    licence = (
        "no licence stated on the dataset card; images are COCO train2017 (Flickr terms of use, "
        "annotations CC BY 4.0)"
    )
    download = (
        "download VLSafe/harmlessness_examine.jsonl from https://huggingface.co/datasets/YangyiYY/LVLM_NLF "
        "and COCO train2017 images from https://cocodataset.org (put them in train2017/ next to the file "
        "or set $VLMSHIELD_COCO_DIR)"
    )
    variants = ("examine", "text")
    default_variant = "examine"
    labels = ("harmful",)
    env_var = "VLMSHIELD_VLSAFE"

    def _coco_dir(self, jsonl: Path) -> Path | None:
        env = os.environ.get("VLMSHIELD_COCO_DIR")
        if env:
            p = Path(env).expanduser()
            if not p.is_dir():
                raise UserInputError(f"$VLMSHIELD_COCO_DIR={env} is not a folder")
            return p
        cands = []
        for base in (jsonl.parent, jsonl.parent.parent):
            cands += [base / "train2017", base / "images", base / "coco" / "train2017"]
        return first_existing(cands)

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        jsonl = path
        if path.is_dir():
            found = first_existing([d / f for d in (path, path / "VLSafe") for f in _FILES])
            if found is None:
                raise UserInputError(f"{path}: no {' or '.join(_FILES)}: {self.download}")
            jsonl = found
        text_only = variant == "text"
        coco = None if text_only else self._coco_dir(jsonl)
        if not text_only and coco is None:
            raise UserInputError(
                f"COCO train2017 images not found next to {jsonl}: {self.download}; or use variant='text'"
            )
        samples: list[Sample] = []
        for n, row in iter_jsonl(jsonl, log):
            query = text_field(row, "query")
            image_id = str_field(row, "image_id") or str_field(row, "image")
            if query is None or image_id is None:
                log.report(
                    jsonl,
                    n,
                    "missing or empty field(s): "
                    + ", ".join(k for k, v in (("query", query), ("image_id", image_id)) if v is None),
                )
                continue
            fname = coco_file_name(image_id)
            sid = f"vlsafe/{variant}/{n}"
            images: tuple[Path, ...] = ()
            if coco is not None:
                image = coco / fname
                if not log.image(jsonl, n, image):
                    continue
                images = (image,)
            meta = {k: v for k, v in row.items() if k not in ("query", "image_id", "image")}
            meta.update(image_id=image_id, coco_file=fname, source_file=str(jsonl), line=n)
            samples.append(Sample(sid, self.name, query, images, "harmful-query", "harmful", metadata=meta))
        return samples
