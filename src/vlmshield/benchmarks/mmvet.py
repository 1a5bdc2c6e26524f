"""MM-Vet (Yu et al., ICML 2024): 218 open-ended capability questions, graded by an LLM judge.

Layout of the release (``mm-vet.zip`` from github.com/yuweihao/MM-Vet)::

    mm-vet.json   {"v1_0": {"imagename": "v1_0.png", "question", "answer", "capability": ["ocr", ...]}}
    images/v1_0.png ...

Samples are ``utility`` with the reference in ``answer``; :meth:`MMVet.score` returns ``None`` because
MM-Vet's answers are graded by an LLM judge (the judges package), not by string match. Hub route:
``lmms-lab/MMVet``, split ``test``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmshield.benchmarks.base import (
    Benchmark,
    Sample,
    first_existing,
    load_hf_dataset,
    register_benchmark,
)
from vlmshield.benchmarks.readers import ProblemLog, json_entries, read_text, str_field, text_field
from vlmshield.errors import UserInputError


def _capabilities(v: Any) -> list[str]:
    if isinstance(v, str):
        return [c.strip() for c in v.split(",") if c.strip()]
    if isinstance(v, list):
        return [str(c) for c in v]
    return []


@register_benchmark
class MMVet(Benchmark):
    name = "mm-vet"
    description = "MM-Vet: 218 open-ended questions over 6 capabilities (utility; scored by an LLM judge)"
    source = (
        "Yu et al., MM-Vet: Evaluating Large Multimodal Models for Integrated Capabilities "
        "(ICML 2024, arXiv 2308.02490); https://github.com/yuweihao/MM-Vet"
    )
    licence = "Apache-2.0 (repository); images collected from the web, research use"
    download = (
        "download mm-vet.zip linked from https://github.com/yuweihao/MM-Vet and unzip it "
        "(mm-vet.json + images/)"
    )
    variants = ()
    default_variant = None
    labels = ("utility",)
    hf_dataset = "lmms-lab/MMVet"
    env_var = "VLMSHIELD_MM_VET"

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        meta_file = path
        if path.is_dir():
            found = first_existing([path / "mm-vet.json", path / "mm-vet" / "mm-vet.json"])
            if found is None:
                raise UserInputError(f"{path}: no mm-vet.json: {self.download}")
            meta_file = found
        image_dir = meta_file.parent / "images"
        samples: list[Sample] = []
        for e in json_entries(read_text(meta_file), meta_file):
            key, entry, line = e.key, e.value, e.line
            if not isinstance(entry, dict):
                log.report(meta_file, line, "each entry must be an object", entry=e.describe())
                continue
            q, a, img = (
                text_field(entry, "question"),
                str_field(entry, "answer"),
                str_field(entry, "imagename"),
            )
            if q is None or a is None or img is None:
                log.report(
                    meta_file,
                    line,
                    "missing or empty 'question', 'answer' or 'imagename'",
                    entry=e.describe(),
                )
                continue
            image = image_dir / img
            if not log.image(meta_file, line, image, entry=e.describe()):
                continue
            caps = _capabilities(entry.get("capability"))
            samples.append(
                Sample(
                    f"mm-vet/{key}",
                    self.name,
                    q,
                    (image,),
                    ",".join(caps) or "unknown",
                    "utility",
                    answer=a,
                    metadata={
                        "capability": caps,
                        "source_file": str(meta_file),
                        "line": line,
                        "entry": e.index,
                    },
                )
            )
        return samples

    def _load_hub(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        ds = load_hf_dataset(self.hf_dataset or "", None, "test", benchmark=self.name)
        samples: list[Sample] = []
        for i, row in enumerate(ds):
            q, a = text_field(row, "question"), str_field(row, "answer")
            if q is None or a is None or row.get("image") is None:
                log.report(f"hf://{self.hf_dataset}", i, "missing question, answer or image")
                continue
            caps = _capabilities(row.get("capability"))
            qid = str(row.get("question_id", f"v1_{i}"))
            samples.append(
                Sample(
                    f"mm-vet/{qid}",
                    self.name,
                    q,
                    (row["image"],),
                    ",".join(caps) or "unknown",
                    "utility",
                    answer=a,
                    metadata={"capability": caps},
                )
            )
        return samples
