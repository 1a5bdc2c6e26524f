"""What an evaluation will run, built and checked before any model is loaded.

An :class:`EvalPlan` holds the defenses (the ``none`` baseline always first), the judges (validated,
not yet built: an LLM judge may load a model), the benchmarks' selected samples in their fixed order,
and the settings that decide results. Any unknown name or bad argument raises
:class:`~vlmshield.errors.UserInputError` with a one-line message (with "did you mean" for names).

Benchmark arguments are ``NAME[:VARIANT][@PATH]``, e.g. ``mini``, ``mini:text``,
``jsonl@data/mine.jsonl``, ``figstep:tiny@../shared/data/figstep``.

``--limit N`` keeps N samples per benchmark: each label's samples are ordered by
``sha256(f"{seed}:{sample id}")`` (a seeded shuffle that does not depend on file order), the N are
shared between labels in proportion to their counts (largest remainders), and the chosen samples keep
the benchmark's own order. The same seed always gives the same subset.

Example:
    >>> plan = build_plan(EvalConfig(benchmarks=["mini:text"], defenses=["coca"], limit=4))  # doctest: +SKIP
    >>> [d.label for d in plan.defenses]  # doctest: +SKIP
    ['none', 'coca']
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmshield.errors import ModelLoadError, UserInputError
from vlmshield.eval.scale import ScaleOptions
from vlmshield.eval.selection import (
    BenchmarkRequest,
    BenchmarkSelection,
    load_selection,
    parse_benchmark_arg,
    select_samples,
    split_commas,
)

#: Defenses compared when none are requested.
DEFAULT_DEFENSES: tuple[str, ...] = ("none", "coca", "ecso", "cmrm:level=sample")
#: The demo model ships dataset-level CMRM vectors (calibrated on anchors disjoint from ``mini``).
DEMO_CMRM_VECTORS = Path(__file__).resolve().parents[1] / "demo" / "artifacts" / "cmrm_vectors.safetensors"
DEFAULT_JUDGES: tuple[str, ...] = ("keyword",)
DEFAULT_BENCHMARKS: tuple[str, ...] = ("mini",)
DEFAULT_MODEL = "demo"
#: Rows per batch when ``--batch-size`` is not given.
DEFAULT_BATCH_SIZE = 16
#: The demo model's default: on a CPU, decoding a 135M model is bound by reading its weights once per
#: step, so 32 rows a step share that cost (no-argument run on a 2-core VM: 280 s against 367 s at 16
#: in the same session, identical answers; docs/demo_model.md). 64 was slower (305 s: one padded batch).
DEMO_BATCH_SIZE = 32


def default_batch_size(model: str) -> int:
    """:data:`DEMO_BATCH_SIZE` for ``demo``, else :data:`DEFAULT_BATCH_SIZE`.

    Example:
        >>> default_batch_size("demo"), default_batch_size("llava-hf/llava-1.5-7b-hf")
        (32, 16)
    """
    return DEMO_BATCH_SIZE if model == "demo" else DEFAULT_BATCH_SIZE


@dataclass
class EvalConfig:
    """The arguments of one evaluation (what ``vlmshield eval`` takes).

    ``defenses`` empty -> :data:`DEFAULT_DEFENSES`; the ``none`` baseline is added when missing.
    ``batch_size`` None -> :func:`default_batch_size` of the model (:attr:`rows_per_batch`).
    ``output_dir`` None -> ``runs/<model>__<benchmarks>__<hash of the settings>``, so the same
    command always resumes into the same folder. ``skip_bad``: go on without a benchmark file that
    cannot be read (its samples are counted as lost) instead of stopping; bad rows are always skipped
    and counted. ``scale``: batch order, placement over GPUs and endpoint limits
    (:class:`~vlmshield.eval.scale.ScaleOptions`; docs/scale.md). ``model`` may be ``openai:MODEL`` (with
    ``scale.base_url``) or ``openai:URL#MODEL``: a remote OpenAI-compatible engine.
    """

    model: str = DEFAULT_MODEL
    benchmarks: list[str] = field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    defenses: list[str] = field(default_factory=list)
    judges: list[str] = field(default_factory=list)
    limit: int | None = None
    batch_size: int | None = None
    max_new_tokens: int = 64
    output_dir: str | Path | None = None
    seed: int = 0
    variant: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    retry_errors: bool = False
    skip_bad: bool = False
    bootstrap_resamples: int = 1000
    command: str | None = None
    scale: ScaleOptions = field(default_factory=ScaleOptions)

    @property
    def rows_per_batch(self) -> int:
        """``batch_size``, or the model's default when it is None."""
        return self.batch_size if self.batch_size is not None else default_batch_size(self.model)

    def check(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise UserInputError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserInputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 1 <= self.max_new_tokens <= 32768:
            raise UserInputError(f"--max-new-tokens must be in 1..32768, got {self.max_new_tokens}")
        if self.bootstrap_resamples < 1:
            raise UserInputError(f"bootstrap resamples must be >= 1, got {self.bootstrap_resamples}")
        if not self.benchmarks:
            raise UserInputError("no benchmark given; use e.g. --benchmark mini")
        self.scale.check()


# ----------------------------------------------------------------------------------------- defenses


@dataclass
class DefenseEntry:
    """A defense of the run: its label (the name, or the spec when a name repeats), spec and object."""

    label: str
    spec_text: str
    defense: Any  # vlmshield.defenses.Defense

    def spec(self) -> dict[str, Any]:
        return normalized(self.defense.spec())


def normalized(obj: Any) -> Any:
    """``obj`` through canonical JSON and back (paths -> strings, tuples -> lists), for comparisons."""
    from vlmshield.eval.store import to_json

    return json.loads(to_json(obj))


def _labels(specs: Sequence[str], names: Sequence[str], kind: str) -> list[str]:
    seen: set[str] = set()
    for s in specs:
        if s in seen:
            raise UserInputError(f"{kind} {s!r} is given twice; drop one")
        seen.add(s)
    return [n if names.count(n) == 1 else s for s, n in zip(specs, names, strict=True)]


def default_defenses(model: str) -> list[str]:
    """:data:`DEFAULT_DEFENSES`, with CMRM at dataset level on the demo model's shipped vectors when
    the model is ``demo`` (other models have no vectors until they are calibrated for them)."""
    out = list(DEFAULT_DEFENSES)
    if model == "demo" and DEMO_CMRM_VECTORS.is_file():
        out[out.index("cmrm:level=sample")] = f"cmrm:vectors={DEMO_CMRM_VECTORS}"
    return out


def resolve_defenses(specs: Sequence[str], model: str = "") -> list[DefenseEntry]:
    """Build every requested defense (default :func:`default_defenses`), ``none`` first."""
    from vlmshield.defenses import DEFENSES, build_defense, parse_defense_spec

    texts = [s.strip() for s in specs if s.strip()] or default_defenses(model)
    names = []
    for t in texts:
        name, _ = parse_defense_spec(t)
        DEFENSES.get(name)  # unknown name -> did-you-mean error before any argument is read
        names.append(name)
    if "none" not in names:
        texts.insert(0, "none")
        names.insert(0, "none")
    else:  # the baseline first
        k = names.index("none")
        texts.insert(0, texts.pop(k))
        names.insert(0, names.pop(k))
    labels = _labels(texts, names, "defense")
    return [DefenseEntry(lab, t, build_defense(t)) for lab, t in zip(labels, texts, strict=True)]


# ------------------------------------------------------------------------------------------- judges


@dataclass
class JudgeEntry:
    """A judge of the run, validated but not built (building an LLM judge may load a model)."""

    label: str
    spec_text: str
    checked_spec: dict[str, Any]


class _UnloadedBackend:
    """Stands in for a judge model while judge arguments are checked."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def generate(self, conversations: Any, config: Any = None) -> Any:  # pragma: no cover - never called
        raise RuntimeError("placeholder backend")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_name(name: str, what: str = "model") -> None:
    """A local-looking path that does not exist -> :class:`ModelLoadError` (hub ids and ``demo`` pass)."""
    if name == "demo":
        return
    p = Path(name).expanduser()
    if p.exists():
        return
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return
    raise ModelLoadError(f"{what} path not found: {name} (check the path or pass a hub id)")


def _checking_backend_factory(kind: str, model: str, options: Mapping[str, str]) -> Any:
    if kind == "local":
        check_model_name(model, "judge model")
    return _UnloadedBackend(model)


def resolve_judges(specs: Sequence[str]) -> list[JudgeEntry]:
    """Check every requested judge (default :data:`DEFAULT_JUDGES`) without loading any judge model."""
    from vlmshield.judges import JUDGES, build_judge, parse_spec

    texts = [s.strip() for s in specs if s.strip()] or list(DEFAULT_JUDGES)
    entries: list[tuple[str, dict[str, Any], str]] = []
    for t in texts:
        name, _ = parse_spec(t)
        JUDGES.get(name)
        judge = build_judge(t, backend_factory=_checking_backend_factory)
        entries.append((t, normalized(judge.spec()), judge.name))
    labels = _labels([t for t, _, _ in entries], [n for _, _, n in entries], "judge")
    return [JudgeEntry(lab, t, spec) for lab, (t, spec, _) in zip(labels, entries, strict=True)]


# --------------------------------------------------------------------------------------------- plan


@dataclass
class EvalPlan:
    """Everything checked and loaded except the model."""

    config: EvalConfig
    defenses: list[DefenseEntry]
    judges: list[JudgeEntry]
    benchmarks: list[BenchmarkSelection]
    samples: list[Any]  # ordered list[Sample] over all benchmarks
    sample_benchmark: dict[str, BenchmarkSelection]

    def batches(self, order: str = "dataset", lengths: Mapping[str, int] | None = None) -> list[list[Any]]:
        """Fixed chunks of the samples in ``order`` (``dataset`` or ``length``; ``lengths``: prompt
        tokens per sample id, see :mod:`vlmshield.eval.shards`): the same on every run, resume and
        number of ranks."""
        from vlmshield.eval.shards import make_batches

        return make_batches(self.samples, self.config.rows_per_batch, order, lengths)

    def sample_ids_sha256(self) -> str:
        return hashlib.sha256("\n".join(s.id for s in self.samples).encode()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60] or "run"


def settings_key(config: EvalConfig) -> dict[str, Any]:
    """The arguments that decide results (hashed into the default output folder name)."""
    return {
        "model": config.model,
        "revision": config.revision,
        "benchmarks": split_commas(config.benchmarks),
        "variant": config.variant,
        "defenses": [s.strip() for s in config.defenses] or default_defenses(config.model),
        "limit": config.limit,
        "seed": config.seed,
        "batch_size": config.rows_per_batch,
        "max_new_tokens": config.max_new_tokens,
        "dtype": config.dtype,
        **({"order": config.scale.order} if config.scale.order else {}),
    }


def default_output_dir(config: EvalConfig) -> Path:
    """``runs/<model>__<benchmarks>__<8 hex of the settings>`` (relative to the working directory)."""
    key = hashlib.sha256(json.dumps(settings_key(config), sort_keys=True).encode()).hexdigest()[:8]
    model = config.model.rstrip("/")
    model_part = slug(Path(model).name if Path(model).expanduser().exists() else model.replace("/", "--"))
    bench_part = slug("+".join(split_commas(config.benchmarks)))
    return Path("runs") / f"{model_part}__{bench_part}__{key}"


def build_plan(config: EvalConfig) -> EvalPlan:
    """Check every name and argument, then load and select the benchmarks' samples. No model is loaded.

    Order of checks: settings, benchmark names and variants, defenses, judges, model path, then data.
    """
    from vlmshield.benchmarks import get_benchmark

    config.check()
    requests = [parse_benchmark_arg(b, config.variant) for b in split_commas(config.benchmarks)]
    if not requests:
        raise UserInputError("no benchmark given; use e.g. --benchmark mini")
    for req in requests:
        get_benchmark(req.name).resolve_variant(req.variant)
    if len(set(requests)) != len(requests):
        raise UserInputError("a benchmark is given twice; drop one")
    defenses = resolve_defenses(config.defenses, config.model)
    judges = resolve_judges(config.judges)
    from vlmshield.backends.remote_model import is_remote_model, parse_remote_model

    if is_remote_model(config.model):
        from vlmshield.eval.scale import check_remote_defenses

        parse_remote_model(config.model, config.scale.base_url)  # an endpoint is named
        check_remote_defenses(config.model, defenses)
    else:
        if config.scale.base_url:
            raise UserInputError(
                f"--base-url is for a remote model (--model openai:MODEL), not {config.model}"
            )
        check_model_name(config.model)
    selections = [
        load_selection(req, config.limit, config.seed, skip_bad=config.skip_bad) for req in requests
    ]
    samples: list[Any] = []
    owner: dict[str, BenchmarkSelection] = {}
    for sel in selections:
        for s in sel.samples:
            if s.id in owner:
                raise UserInputError(
                    f"sample id {s.id!r} appears in {owner[s.id].request.label} and {sel.request.label}; "
                    "evaluate them in separate runs"
                )
            owner[s.id] = sel
            samples.append(s)
    return EvalPlan(config, defenses, judges, selections, samples, owner)


__all__ = [
    "DEFAULT_BENCHMARKS",
    "DEFAULT_DEFENSES",
    "DEFAULT_JUDGES",
    "DEFAULT_MODEL",
    "DEMO_CMRM_VECTORS",
    "BenchmarkRequest",
    "BenchmarkSelection",
    "DefenseEntry",
    "EvalConfig",
    "EvalPlan",
    "JudgeEntry",
    "ScaleOptions",
    "build_plan",
    "check_model_name",
    "default_defenses",
    "default_output_dir",
    "parse_benchmark_arg",
    "resolve_defenses",
    "resolve_judges",
    "select_samples",
    "split_commas",
]
