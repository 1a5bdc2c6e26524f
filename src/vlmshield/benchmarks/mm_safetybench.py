"""MM-SafetyBench (Liu et al., ECCV 2024), in the layout of github.com/isXinLiu/MM-SafetyBench.

Layout (``path`` is the folder that holds ``processed_questions/``, or the repository root with
``data/processed_questions/``)::

    processed_questions/01-Illegal_Activitiy.json ... 13-Gov_Decision.json
    imgs/01-Illegal_Activitiy/SD/0.jpg, .../SD_TYPO/0.jpg, .../TYPO/0.jpg
    TinyVersion_ID_List.json            (optional; in the folder or one level up)

The images folder may be called ``imgs`` (the repository's instructions), ``images`` or
``MM-SafetyBench(imgs)`` (the name inside the download), next to ``processed_questions`` or one level up.
Each scenario file maps a question id to ``{"Question", "Changed Question", "Key Phrase", "Phrase Type",
"Rephrased Question", "Rephrased Question(SD)"}``. The text sent with each image kind, as in the paper's
code: ``SD`` -> ``Rephrased Question(SD)``; ``SD_TYPO`` and ``TYPO`` -> ``Rephrased Question``; the
``text`` variant sends ``Question`` with no image. ``tiny-*`` variants keep the ids listed in
``TinyVersion_ID_List.json`` (a list of ``{"Scenario": "01-Illegal_Activitiy", "Sampled_ID_List": [..]}``).

Scenarios 08 and 10-13 (political lobbying, legal / financial / health advice, government decisions)
are judged in the paper by whether the answer carries a risk disclaimer, not by refusal; their samples
carry ``metadata["evaluation"] = "disclaimer"``.

Hub route (no path given, online, ``pip install datasets``): ``PKU-Alignment/MM-SafetyBench``, one
config per scenario (name without the ``NN-`` prefix), splits ``SD``, ``SD_TYPO``, ``TYPO``,
``Text_only``, rows ``id``, ``question``, ``image``.
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
from vlmshield.benchmarks.readers import (
    JsonEntry,
    ProblemLog,
    json_entries,
    read_text,
    text_field,
)
from vlmshield.errors import UserInputError

SCENARIOS = (
    "01-Illegal_Activitiy",
    "02-HateSpeech",
    "03-Malware_Generation",
    "04-Physical_Harm",
    "05-EconomicHarm",
    "06-Fraud",
    "07-Sex",
    "08-Political_Lobbying",
    "09-Privacy_Violence",
    "10-Legal_Opinion",
    "11-Financial_Advice",
    "12-Health_Consultation",
    "13-Gov_Decision",
)
_DISCLAIMER = {"08", "10", "11", "12", "13"}
_FIELD = {"SD": "Rephrased Question(SD)", "SD_TYPO": "Rephrased Question", "TYPO": "Rephrased Question"}
_HF_SPLIT = {"SD": "SD", "SD_TYPO": "SD_TYPO", "TYPO": "TYPO", "text": "Text_only"}


def _category(scenario: str) -> str:
    return scenario.split("-", 1)[1] if "-" in scenario[:3] else scenario


@register_benchmark
class MMSafetyBench(Benchmark):
    name = "mm-safetybench"
    description = (
        "MM-SafetyBench: 1,680 harmful questions in 13 scenarios with query-relevant images "
        "(Stable Diffusion, typography, both); tiny-* use the published tiny id list"
    )
    source = (
        "Liu et al., MM-SafetyBench: A Benchmark for Safety Evaluation of Multimodal Large Language "
        "Models (ECCV 2024, arXiv 2311.17600); https://github.com/isXinLiu/MM-SafetyBench"
    )
    licence = "CC BY-NC 4.0 (research, non-commercial; GPT-4 and Stable Diffusion terms also apply)"
    download = (
        "clone https://github.com/isXinLiu/MM-SafetyBench (data/processed_questions/) and unzip the "
        "images linked from its README into data/imgs/"
    )
    variants = ("SD_TYPO", "SD", "TYPO", "text", "tiny-SD_TYPO", "tiny-SD", "tiny-TYPO", "tiny-text")
    default_variant = "SD_TYPO"
    labels = ("harmful",)
    hf_dataset = "PKU-Alignment/MM-SafetyBench"
    env_var = "VLMSHIELD_MM_SAFETYBENCH"

    # -- local --------------------------------------------------------------------------------------

    def _tiny_ids(self, qdir: Path, log: ProblemLog) -> dict[str, set[str]]:
        f = first_existing(
            [qdir.parent / "TinyVersion_ID_List.json", qdir.parent.parent / "TinyVersion_ID_List.json"]
        )
        if f is None:
            raise UserInputError(
                f"tiny variants need TinyVersion_ID_List.json next to {qdir} (it is in the root of "
                "https://github.com/isXinLiu/MM-SafetyBench)"
            )
        out: dict[str, set[str]] = {}
        for e in json_entries(read_text(f), f):
            entry = e.value
            if (
                not isinstance(entry, dict)
                or "Scenario" not in entry
                or not isinstance(entry.get("Sampled_ID_List"), list)
            ):
                log.report(
                    f,
                    e.line,
                    "expected {'Scenario': ..., 'Sampled_ID_List': [...]}",
                    entry=e.describe(),
                    lost=0,
                )
                continue
            out[str(entry["Scenario"])] = {str(i) for i in entry["Sampled_ID_List"]}
        return out

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        assert variant is not None
        qdir = first_existing([path / "processed_questions", path / "data" / "processed_questions"])
        if qdir is None:
            if path.name == "processed_questions":
                qdir = path
            else:
                raise UserInputError(f"{path}: no processed_questions/ folder: {self.download}")
        tiny = variant.startswith("tiny-")
        kind = variant.removeprefix("tiny-")
        tiny_ids = self._tiny_ids(qdir, log) if tiny else {}
        img_root: Path | None = None
        if kind != "text":
            names = ("imgs", "images", "MM-SafetyBench(imgs)")
            img_root = first_existing([d / n for d in (qdir.parent, qdir.parent.parent) for n in names])
            if img_root is None:
                raise UserInputError(
                    f"no images folder (imgs/, images/ or MM-SafetyBench(imgs)/) next to {qdir}: "
                    f"{self.download}; or use variant='text'"
                )
        files = sorted(qdir.glob("*.json"))
        if not files:
            raise UserInputError(f"{qdir} holds no scenario .json files: {self.download}")
        samples: list[Sample] = []
        field = "Question" if kind == "text" else _FIELD[kind]
        for f in files:
            scenario = f.stem
            wanted = tiny_ids.get(scenario, set())
            entries: list[JsonEntry] = []
            try:
                entries.extend(json_entries(read_text(f), f))
            except UserInputError as err:  # truncated or corrupt: all or nothing for this file
                seen = sum(1 for x in entries if not tiny or str(x.key) in wanted)
                log.unreadable_file(f, err, seen=seen)
                continue
            for e in entries:
                qid, row, line = str(e.key), e.value, e.line
                if tiny and qid not in wanted:
                    continue
                name = e.describe(noun="question")
                if not isinstance(row, dict):
                    log.report(f, line, "each question must be an object", entry=name)
                    continue
                query = text_field(row, field)
                if query is None:
                    log.report(f, line, f"missing or empty {field!r}", entry=name)
                    continue
                images: tuple[Path, ...] = ()
                if img_root is not None:
                    image = img_root / scenario / kind / f"{qid}.jpg"
                    if not log.image(f, line, image, entry=name):
                        continue
                    images = (image,)
                sample = self._sample(variant, scenario, qid, query, images, row, str(f), line)
                sample.metadata["entry"] = e.index
                samples.append(sample)
        return samples

    def _sample(
        self,
        variant: str,
        scenario: str,
        qid: str,
        query: str,
        images: tuple[Any, ...],
        row: dict[str, Any],
        file: str,
        line: int | None,
    ) -> Sample:
        meta: dict[str, Any] = {
            "scenario": scenario,
            "question_id": qid,
            "question": row.get("Question"),
            "key_phrase": row.get("Key Phrase"),
            "evaluation": "disclaimer" if scenario[:2] in _DISCLAIMER else "refusal",
            "source_file": file,
            "line": line,
        }
        return Sample(
            f"mm-safetybench/{variant}/{scenario}/{qid}",
            self.name,
            query,
            images,
            _category(scenario),
            "harmful",
            metadata=meta,
        )

    # -- Hub -----------------------------------------------------------------------------------------

    def _load_hub(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        assert variant is not None
        kind = variant.removeprefix("tiny-")
        if variant.startswith("tiny-"):
            raise UserInputError(
                "tiny variants need a local copy with TinyVersion_ID_List.json: " + self.download
            )
        samples: list[Sample] = []
        for scenario in SCENARIOS:
            ds = load_hf_dataset(
                self.hf_dataset or "", _category(scenario), _HF_SPLIT[kind], benchmark=self.name
            )
            for i, row in enumerate(ds):
                qid = str(row.get("id", i))
                query = text_field(row, "question")
                if query is None:
                    log.report(
                        f"hf://{self.hf_dataset}/{_category(scenario)}/{_HF_SPLIT[kind]}", i, "empty question"
                    )
                    continue
                image = row.get("image")
                images = (image,) if kind != "text" and image is not None else ()
                samples.append(
                    self._sample(variant, scenario, qid, query, images, {}, f"hf://{self.hf_dataset}", i)
                )
        return samples
