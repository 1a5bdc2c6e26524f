"""MME (Fu et al., 2023): yes/no perception and cognition questions, scored without a judge.

Layout of ``MME_Benchmark_release_version/`` (from the authors, on request; see
github.com/BradyFU/Awesome-Multimodal-Large-Language-Models, Evaluation)::

    existence/000000006040.jpg + existence/000000006040.txt         images and questions side by side
    artwork/images/10002.jpg + artwork/questions_answers_YN/10002.txt   (artwork, celebrity, landmark,
                                                                          posters, scene)

Each ``.txt`` holds one question per line, ``question<TAB>Yes|No`` (two per image). Every question is a
sample (``utility``, answer ``Yes``/``No``); ``metadata["image_key"]`` groups the two questions of an
image for MME's accuracy+ (both right). :meth:`MME.score` parses the answer as MME's evaluation tool does:
lower-case, drop periods; ``yes``/``no`` exactly, else look for ``yes`` then ``no`` in the first four
characters; anything else scores 0. Hub route: ``lmms-lab/MME``, split ``test``.
"""

from __future__ import annotations

from pathlib import Path

from vlmshield.benchmarks.base import (
    Benchmark,
    Sample,
    SampleImage,
    load_hf_dataset,
    register_benchmark,
)
from vlmshield.benchmarks.readers import ProblemLog, read_text, str_field, text_field
from vlmshield.errors import UserInputError

COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def parse_yes_no(response: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``, following MME's evaluation tool."""
    r = response.lower().strip().replace(".", "")
    if r in ("yes", "no"):
        return r
    head = r[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


@register_benchmark
class MME(Benchmark):
    name = "mme"
    description = (
        "MME: 2,374 yes/no questions over 14 perception and cognition subtasks (utility, judge-free)"
    )
    source = (
        "Fu et al., MME: A Comprehensive Evaluation Benchmark for Multimodal Large Language Models "
        "(arXiv 2306.13394); https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models"
    )
    licence = "research use only, as granted by the authors on request (images from public datasets)"
    download = (
        "request MME_Benchmark_release_version from the authors (see "
        "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation) "
        "or use the Hub copy lmms-lab/MME"
    )
    variants = ()
    default_variant = None
    labels = ("utility",)
    hf_dataset = "lmms-lab/MME"
    env_var = "VLMSHIELD_MME"

    def _load_local(self, path: Path, variant: str | None, log: ProblemLog) -> list[Sample]:
        root = path
        if not any(root.glob("*/*.txt")) and not any(root.glob("*/questions_answers_YN/*.txt")):
            inner = root / "MME_Benchmark_release_version"
            if inner.is_dir():
                root = inner
            else:
                raise UserInputError(
                    f"{path}: no MME subtask folders with question .txt files: {self.download}"
                )
        samples: list[Sample] = []
        for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            qa_dir, img_dir = task_dir, task_dir
            if (task_dir / "questions_answers_YN").is_dir():
                qa_dir, img_dir = task_dir / "questions_answers_YN", task_dir / "images"
            for txt in sorted(qa_dir.glob("*.txt")):
                try:
                    lines = read_text(txt).splitlines()
                except UserInputError as e:  # not UTF-8, unreadable: the file's questions are lost
                    log.unreadable_file(txt, e)
                    continue
                image = next(
                    (
                        img_dir / f"{txt.stem}{e}"
                        for e in _IMAGE_EXTS
                        if (img_dir / f"{txt.stem}{e}").is_file()
                    ),
                    None,
                )
                if image is None:
                    n_questions = sum(1 for raw in lines if raw.strip())
                    log.report(txt, None, f"no image {txt.stem}.jpg/.png in {img_dir}", lost=n_questions)
                    continue
                for n, raw in enumerate(lines, 1):
                    if not raw.strip():
                        continue
                    parts = raw.rstrip("\n").split("\t")
                    if (
                        len(parts) != 2
                        or not parts[0].strip()
                        or parts[1].strip().lower() not in ("yes", "no")
                    ):
                        log.report(txt, n, "expected 'question<TAB>Yes' or 'question<TAB>No'")
                        continue
                    q, a = parts[0], parts[1].strip().capitalize()
                    key = f"{task_dir.name}/{txt.stem}"
                    samples.append(self._sample(f"{key}/{n}", q, image, a, task_dir.name, key, str(txt), n))
        return samples

    def _sample(
        self, qid: str, q: str, image: SampleImage, a: str, task: str, key: str, file: str, line: int | None
    ) -> Sample:
        meta = {
            "subtask": task,
            "group": "cognition" if task in COGNITION else "perception",
            "image_key": key,
            "source_file": file,
            "line": line,
        }
        return Sample(
            f"mme/{qid}",
            self.name,
            q,
            (image,),
            task,
            "utility",
            answer=a,
            choices=("Yes", "No"),
            metadata=meta,
        )

    def _load_hub(self, variant: str | None, log: ProblemLog) -> list[Sample]:
        ds = load_hf_dataset(self.hf_dataset or "", None, "test", benchmark=self.name)
        samples: list[Sample] = []
        counts: dict[str, int] = {}
        for i, row in enumerate(ds):
            q, a, task = text_field(row, "question"), str_field(row, "answer"), str_field(row, "category")
            if q is None or a is None or task is None or row.get("image") is None:
                log.report(f"hf://{self.hf_dataset}", i, "missing question, answer, category or image")
                continue
            key = str(row.get("question_id", f"{task}/{i}")).rsplit(".", 1)[0]
            key = key if key.startswith(task) else f"{task}/{key}"
            counts[key] = counts.get(key, 0) + 1
            samples.append(
                self._sample(
                    f"{key}/{counts[key]}",
                    q,
                    row["image"],
                    a.capitalize(),
                    task,
                    key,
                    f"hf://{self.hf_dataset}",
                    i,
                )
            )
        return samples

    def score(self, sample: Sample, response: str) -> float | None:
        if sample.answer is None:
            return None
        return 1.0 if parse_yes_no(response) == sample.answer.lower() else 0.0
