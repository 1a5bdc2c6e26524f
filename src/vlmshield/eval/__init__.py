"""Evaluation: run defenses on benchmarks (resumable, SQLite), compute metrics, write reports.

Example:
    >>> from vlmshield.eval import EvalConfig, run_eval, summarize_run
    >>> result = run_eval(EvalConfig(model="demo", benchmarks=["mini"], limit=16))  # doctest: +SKIP
    >>> summarize_run(result.output_dir)["defenses"]["none"]["unsafe_rate"]  # doctest: +SKIP

See docs/evaluation.md, and docs/scale.md for torchrun / accelerate launch, big models and remote engines.
"""

from vlmshield.eval.plan import (
    DEFAULT_DEFENSES,
    DEFAULT_JUDGES,
    EvalConfig,
    EvalPlan,
    build_plan,
    default_output_dir,
    select_samples,
)
from vlmshield.eval.report import summarize_run, write_report
from vlmshield.eval.runner import RunResult, run_eval
from vlmshield.eval.scale import ScaleOptions
from vlmshield.eval.store import RunStore

__all__ = [
    "DEFAULT_DEFENSES",
    "DEFAULT_JUDGES",
    "EvalConfig",
    "EvalPlan",
    "RunResult",
    "RunStore",
    "ScaleOptions",
    "build_plan",
    "default_output_dir",
    "run_eval",
    "select_samples",
    "summarize_run",
    "write_report",
]
