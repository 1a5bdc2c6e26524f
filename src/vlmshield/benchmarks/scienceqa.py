"""ScienceQA (Lu et al., NeurIPS 2022): multiple-choice science questions, scored without a judge.

Layout of the release (github.com/lupantech/ScienceQA, ``data/scienceqa/``)::

    problems.json     {"<pid>": {"question", "choices": [...], "answer": <index>, "hint", "image":
                                 "image.png" | null, "split": "train" | "val" | "test", "subject", ...}}
    images/test/<pid>/image.png ...

Variants: ``test-img`` (default; test questions with an image, the "ScienceQA-IMG" set LLaVA reports),
``test`` (all test questions; text-only ones have no image), ``val-img``, ``val``. The query lists the
options as ``A. ...`` lines followed by the answer instruction LLaVA uses for this benchmark:
``"Answer with the option's letter from the given choices directly."``; a non-empty ``hint`` is put in
front as ``Context: ...``. :meth:`ScienceQA.score` reads the chosen letter (``B``, ``(B)``, ``B.``,
``The answer is B``, ``The correct option is B``) or an option's text, both sides normalised the same
way (:func:`normalize_option`: case, surrounding whitespace and quotes, trailing ``.!?;:,``), so an
option that ends with a period matches the same text with or without it; anything else scores 0. Hub route:
``derek-thomas/ScienceQA`` (``validation`` / ``test`` splits).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlmshield.benchmarks.base import (
    Benchmark,
    Sample,
    first_existing,
    load_hf_dataset,
    register_benchmark,
)
from vlmshield.benchmarks.readers import ProblemLog, json_entries, read_text, str_field
from vlmshield.errors import UserInputError

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"
_LEADING = re.compile(r"^[\s*\"'(\[]*([A-J])(?:[.:,)\]]|$)")
# the words case-insensitive, the letter upper case ("the answer is a cat" picks nothing)
_STATED = re.compile(r"(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-J])\)?(?:[\s.:,)]|$)")
_EDGE_PUNCT = re.compile(r"^[\s\"'`*]+|[\s\"'`*.!?;:,]+$")
_SPACES = re.compile(r"\s+")


def format_question(question: str, choices: list[str], hint: str | None) -> str:
    """The prompt: optional ``Context:`` hint, the question, lettered options, the answer instruction."""
    parts = []
    if hint:
        parts.append(f"Context: {hint}")
    parts.append(question)
    parts += [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    parts.append(ANSWER_INSTRUCTION)
    return "\n".join(parts)


def normalize_option(text: str) -> str:
    """An answer or option text as compared: lower-cased, runs of whitespace as one space, without
    surrounding whitespace, quotes or asterisks and without trailing ``.!?;:,``.

    Example:
        >>> normalize_option(' "The frog is green." ') == normalize_option("the frog is  green")
        True
    """
    prev = None
    out = text
    while prev != out:  # quotes around a sentence that ends with a period: strip both
        prev, out = out, _EDGE_PUNCT.sub("", out)
    return _SPACES.sub(" ", out).lower()


def parse_choice(response: str, choices: tuple[str, ...]) -> str | None:
    """The option letter a response picks, or ``None``: a letter (``B``, ``(B)``, ``B.``,
    ``The answer is B``) or exactly one option's text (see :func:`normalize_option`)."""
    r = response.strip()
    n = len(choices)
    for m in (_LEADING.match(r), _STATED.search(r)):
        if m and LETTERS.index(m.group(1)) < n:
            return m.group(1)
    said = normalize_option(r)
    if not said:
        return None
    for i, c in enumerate(choices):
        if said == normalize_option(c):
            return LETTERS[i]
    return None


@register_benchmark
class ScienceQA(Benchmark):
    name = "scienceqa"
    description = (
        "ScienceQA: multiple-choice science questions (test-img: 2,017 with images; utility, judge-free)"
    )
    source = (
        "Lu et al., Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question "
        "Answering (NeurIPS 2022, arXiv 2209.09513); https://github.com/lupantech/ScienceQA"
    )
    licence = "CC BY-NC-SA 4.0"
    download = (
        "download problems.json and the images (train/val/test zips) as described in "
        "https://github.com/lupantech/ScienceQA (data/scienceqa/)"
    )
    variants = ("test-img", "test", "val-img", "val")
    default_variant = "test-img"
    labels = ("utility",)
    hf_dataset = "derek-thomas/ScienceQA"
    env_var = "VLMSHIELD_SCIENCEQA"

    def _sample(
        self, pid: str, row: dict[str, Any], image: Any, variant: str, file: str, line: int | None
    ) -> Sample:
        choices = [str(c) for c in row["choices"]]
        hint = str_field(row, "hint")
        return Sample(
            f"scienceqa/{variant.removesuffix('-img')}/{pid}",
            self.name,
            format_question(str(row["question"]).strip(), choices, hint),
            (image,) if image is not None else (),
            str(row.get("subject") or "unknown"),
            "utility",
            answer=LETTERS[int(row["answer"])],
            choices=tuple(choices),
            metadata={
                "pid": pid,
                "question": row["question"],
                "grade": row.get("grade"),
                "topic": row.get("topic"),
                "source_file": file,
                "line": line,
            },
        )

    @staticmethod
    def _valid(row: Any) -> str | None:
        """What is wrong with a problem entry, or ``None``."""
        if not isinstance(row, dict):
            return "each problem must be an object"
        ch = row.get("choices")
        if str_field(row, "question") is None or not isinstance(ch, list) or not 2 <= len(ch) <= len(LETTERS):
            return "needs a 'question' and a 'choices' list of 2-10 options"
        a = row.get("answer")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < len(ch):
            return f"'answer' must be an option index 0-{len(ch) - 1}, got {a!r}"
        return None

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        assert variant is not None
        problems = path
        if path.is_dir():
            found = first_existing([path / "problems.json", path / "data" / "scienceqa" / "problems.json"])
            if found is None:
                raise UserInputError(f"{path}: no problems.json: {self.download}")
            problems = found
        split, need_image = variant.removesuffix("-img"), variant.endswith("-img")
        image_root = problems.parent / "images"
        samples: list[Sample] = []
        for e in json_entries(read_text(problems), problems):
            pid, row, line = e.key, e.value, e.line
            if isinstance(row, dict) and row.get("split") != split:
                continue
            wrong = self._valid(row)
            if wrong:
                log.report(problems, line, wrong, entry=e.describe(noun="problem"))
                continue
            image_name = str_field(row, "image")
            if need_image and image_name is None:
                continue
            image = None
            if image_name is not None:
                image = first_existing(
                    [
                        image_root / split / str(pid) / image_name,
                        problems.parent / split / str(pid) / image_name,
                    ]
                )
                if image is None:
                    log.report(
                        problems,
                        line,
                        f"image not found: {image_root / split / str(pid) / image_name}",
                        entry=e.describe(noun="problem"),
                    )
                    continue
            samples.append(self._sample(str(pid), row, image, variant, str(problems), line))
        return samples

    def _load_hub(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        assert variant is not None
        split, need_image = variant.removesuffix("-img"), variant.endswith("-img")
        ds = load_hf_dataset(
            self.hf_dataset or "", None, "validation" if split == "val" else "test", benchmark=self.name
        )
        samples: list[Sample] = []
        for i, row in enumerate(ds):
            wrong = self._valid(row)
            if wrong:
                log.report(f"hf://{self.hf_dataset}", i, wrong)
                continue
            image = row.get("image")
            if need_image and image is None:
                continue
            samples.append(self._sample(str(i), row, image, variant, f"hf://{self.hf_dataset}", i))
        return samples

    def score(self, sample: Sample, response: str) -> float | None:
        if sample.answer is None or not sample.choices:
            return None
        return 1.0 if parse_choice(response, sample.choices) == sample.answer else 0.0
