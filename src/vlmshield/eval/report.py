"""Reports of a run folder: a JSON summary, a Markdown report and PNG plots (matplotlib, Agg).

:func:`summarize_run` reads ``manifest.json`` and ``results.sqlite`` and returns one JSON-ready object:

- ``defenses``: for each defense label (in run order, ``none`` first), under the primary (first) judge:
  ``n`` (harmful samples scored), ``unsafe_rate``, ``ci`` ([low, high], 95% percentile bootstrap),
  ``refusal_rate``, ``refusal_ci``, ``over_refusal`` / ``utility`` ({rate, ci, n}), ``scored``
  (items scored per label), ``per_category``, ``cost`` (per-sample forward passes and tokens; wall
  time per sample as the median over batches, ``wall_time_vs_none`` as the median per-batch ratio;
  see :func:`vlmshield.eval.metrics.cost_summary`), ``errors``,
  ``unscored``, ``unsafe_vs_none`` (paired difference), and ``judges`` (the safety metrics under every
  judge);
- ``agreement``: Cohen's kappa between judges on the ``unsafe`` decision (when several judges ran);
- run facts: ``model``, ``benchmarks`` (with the samples lost while loading, per file), ``judge``,
  ``judges``, ``samples``, ``complete``;
- ``padding``: how much of the baseline's batches was padding (prompt positions, decoding steps, and
  the prompt waste the evaluation order would have had), ``None`` for a remote model.

:func:`write_report` writes ``report.md`` (its reproduce line names data by the absolute paths the
manifest records), ``tradeoff.png`` and ``per_category.png`` (:mod:`vlmshield.eval.plots`).

Example:
    >>> summary = summarize_run("runs/my-run")  # doctest: +SKIP
    >>> summary["defenses"]["coca"]["unsafe_rate"], summary["defenses"]["coca"]["ci"]  # doctest: +SKIP
    (0.125, [0.0, 0.3125])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError
from vlmshield.eval import detection, metrics
from vlmshield.eval.manifest import MANIFEST_NAME, read_manifest
from vlmshield.eval.plots import plot_per_category, plot_tradeoff
from vlmshield.eval.store import DB_NAME, RunStore

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"


@dataclass
class ReportFiles:
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _open(run_dir: str | Path) -> tuple[dict[str, Any], RunStore]:
    d = Path(run_dir)
    if not d.is_dir():
        raise UserInputError(f"run folder not found: {d} (pass the --output-dir of a `vlmshield eval` run)")
    manifest = read_manifest(d)
    if manifest is None or not (d / DB_NAME).is_file():
        raise UserInputError(f"{d} is not a vlmshield eval run (no {MANIFEST_NAME} or {DB_NAME})")
    return manifest, RunStore(d / DB_NAME)


def _utility_value(gen: Mapping[str, Any], verdict: Mapping[str, Any] | None) -> float | None:
    if gen.get("score") is not None:
        return float(gen["score"])
    if verdict is None or verdict.get("error"):
        return None
    if verdict.get("score") is not None:
        return float(verdict["score"])
    if verdict.get("label") in ("correct", "incorrect"):
        return 1.0 if verdict["label"] == "correct" else 0.0
    return None


def item_results(
    samples: Sequence[Mapping[str, Any]],
    generations: Sequence[Mapping[str, Any]],
    verdicts: Sequence[Mapping[str, Any]],
    defense: str,
    judge: str,
) -> list[metrics.ItemResult]:
    """The :class:`~vlmshield.eval.metrics.ItemResult` of every generated sample of ``defense`` under
    ``judge``, in sample order."""
    gens = {g["sample_id"]: g for g in generations if g["defense"] == defense}
    ver = {v["sample_id"]: v for v in verdicts if v["defense"] == defense and v["judge"] == judge}
    out = []
    for s in samples:
        g = gens.get(s["sample_id"])
        if g is None:
            continue
        v = ver.get(s["sample_id"])
        ok = v is not None and not v.get("error")
        cost = {
            "forward_passes": g.get("forward_passes") or 0,
            "prompt_tokens": g.get("prompt_tokens") or 0,
            "new_tokens": g.get("new_tokens") or 0,
            "calls": g.get("calls") or 0,
            "wall_time_s": g.get("wall_time_s") or 0.0,
        }
        out.append(
            metrics.ItemResult(
                sample_id=s["sample_id"],
                label=s["label"],
                category=s["category"],
                unsafe=v["unsafe"] if ok and v is not None else None,
                refused=v["refused"] if ok and v is not None else None,
                score=_utility_value(g, v) if s["label"] == "utility" else None,
                error=g.get("error"),
                cost=cost,
                batch=g.get("batch"),
            )
        )
    return out


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """The JSON summary of a run folder (see the module docstring)."""
    manifest, store = _open(run_dir)
    try:
        samples, gens, verdicts = store.samples(), store.generations(), store.verdicts()
    finally:
        store.close()
    defenses = [d["label"] for d in manifest.get("defenses", [])]
    present = list(dict.fromkeys(v["judge"] for v in verdicts))
    # the manifest lists the judges of the latest invocation first: its first judge is the primary one
    judges = [j["label"] for j in manifest.get("judges", []) if j["label"] in present]
    judges += [j for j in present if j not in judges]
    primary = judges[0] if judges else None
    bs = manifest.get("bootstrap", {})
    kw = {
        "n_resamples": int(bs.get("resamples", metrics.DEFAULT_RESAMPLES)),
        "seed": int(manifest.get("seeds", {}).get("bootstrap", 0)),
    }

    out_def: dict[str, Any] = {}
    base_items = (
        {j: item_results(samples, gens, verdicts, "none", j) for j in judges} if "none" in defenses else {}
    )
    for d in defenses:
        per_judge: dict[str, Any] = {}
        for j in judges:
            items = item_results(samples, gens, verdicts, d, j)
            base = base_items.get(j) if d != "none" else None
            per_judge[j] = metrics.defense_summary(items, baseline=base, **kw)
        if primary is not None:
            entry = dict(per_judge[primary])
        else:  # nothing judged yet
            items = item_results(samples, gens, verdicts, d, "")
            entry = metrics.defense_summary(items, baseline=None, **kw)
        if d == "none" and entry["cost"]["n"]:
            entry["cost"]["wall_time_vs_none"] = 1.0
        entry["judge"] = primary
        entry["judges"] = {
            j: {k: s[k] for k in ("n", "unsafe_rate", "ci", "refusal_rate", "over_refusal", "utility")}
            for j, s in per_judge.items()
        }
        entry["generated"] = sum(1 for g in gens if g["defense"] == d)
        detected = detection.detection_summary(samples, gens, d)  # defenses that score inputs
        if detected is not None:
            entry["detection"] = detected
        out_def[d] = entry

    agreement: list[dict[str, Any]] = []
    if len(judges) > 1:
        keys = [(g["defense"], g["sample_id"]) for g in gens if g.get("error") is None]
        vmap = {(v["defense"], v["sample_id"], v["judge"]): v for v in verdicts}
        ratings = {j: [(vmap.get((d, s, j)) or {}).get("unsafe") for d, s in keys] for j in judges}
        agreement = metrics.judge_agreement(ratings)

    total = len(samples) * len(defenses)
    return {
        **_padding(manifest, gens),
        "run_dir": str(Path(run_dir)),
        "model": manifest.get("model", {}),
        "benchmarks": manifest.get("benchmarks", []),
        "samples": len(samples),
        "labels": {
            lab: sum(1 for s in samples if s["label"] == lab) for lab in ("harmful", "benign", "utility")
        },
        "judge": primary,
        "judges": judges,
        "complete": len(gens) >= total and total > 0,
        "generations": len(gens),
        "expected_generations": total,
        "bootstrap": {"resamples": kw["n_resamples"], "seed": kw["seed"], "level": metrics.DEFAULT_LEVEL},
        "defenses": out_def,
        "agreement": agreement,
    }


def _padding(manifest: Mapping[str, Any], gens: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``padding``: the baseline's padding waste (:func:`~vlmshield.eval.metrics.batch_padding`), with
    the batch order; ``None`` for a remote model (the engine batches requests as it likes)."""
    gen = manifest.get("generation", {})
    if manifest.get("model", {}).get("device") == "remote":
        return {"padding": None}
    pad = metrics.batch_padding([g for g in gens if g["defense"] == "none"], int(gen.get("batch_size") or 1))
    if pad is not None:
        pad = {"defense": "none", "order": gen.get("order", "dataset"), **pad}
    return {"padding": pad}


# ------------------------------------------------------------------------------------------ markdown


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def _ci(ci: Sequence[Any]) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def summary_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Header + one row per defense: the table ``eval`` prints and the report starts with."""
    rows = [
        [
            "defense",
            "scored h/b/u",
            "unsafe (95% CI)",
            "refusal",
            "over-refusal",
            "utility",
            "passes/sample",
            "tokens/sample",
            "s/sample",
            "x none",
            "errors",
        ]
    ]
    for name, d in summary["defenses"].items():
        cost = d["cost"]["per_sample"]
        tokens = None if cost["new_tokens"] is None else cost["prompt_tokens"] + cost["new_tokens"]
        scored = d.get("scored") or {
            "harmful": d["n"],
            "benign": d["over_refusal"]["n"],
            "utility": d["utility"]["n"],
        }
        rows.append(
            [
                name,
                "/".join(str(scored.get(k, 0)) for k in ("harmful", "benign", "utility")),
                _pct(d["unsafe_rate"]) + _ci(d["ci"]),
                _pct(d["refusal_rate"]),
                _pct(d["over_refusal"]["rate"]) if d["over_refusal"]["n"] else "-",
                _pct(d["utility"]["rate"]) if d["utility"]["n"] else "-",
                _num(cost["forward_passes"], "{:.1f}"),
                _num(tokens, "{:.0f}"),
                _num(cost["wall_time_s"], "{:.3f}"),
                _num(d["cost"]["wall_time_vs_none"], "{:.2f}x"),
                str(d["errors"]),
            ]
        )
    return rows


def _md_table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(summary: Mapping[str, Any], manifest: Mapping[str, Any], plots: Sequence[Path]) -> str:
    m = summary.get("model", {})
    benches = ", ".join(
        f"{b['name']}{':' + b['variant'] if b.get('variant') else ''} ({b['selected_samples']}/{b['total_samples']})"
        for b in summary.get("benchmarks", [])
    )
    labels = summary.get("labels", {})
    lines = [
        "# vlmshield evaluation report",
        "",
        f"- model: `{m.get('name')}` (revision `{m.get('revision')}`, {m.get('dtype')}, {m.get('device')})",
        f"- benchmarks: {benches}; samples: {summary['samples']} "
        f"({labels.get('harmful', 0)} harmful, {labels.get('benign', 0)} benign, {labels.get('utility', 0)} utility)",
        f"- judge: `{summary.get('judge')}`"
        + (f" (also: {', '.join(summary['judges'][1:])})" if len(summary.get("judges", [])) > 1 else ""),
        f"- generation: greedy, max {manifest.get('generation', {}).get('max_new_tokens')} new tokens, "
        f"batch size {manifest.get('generation', {}).get('batch_size')}; seed {manifest.get('seeds', {}).get('seed')}",
        f"- intervals: 95% percentile bootstrap, {summary['bootstrap']['resamples']} resamples",
        *_padding_line(summary.get("padding")),
        f"- complete: {'yes' if summary['complete'] else 'no'} ({summary['generations']}/{summary['expected_generations']} generations)",
        "",
        "## Summary",
        "",
        "Scored h/b/u = harmful / benign / utility samples with a decision. Unsafe = attack success rate "
        "on harmful samples (the judge's `unsafe` decision; for the keyword judge, not refused). "
        "Over-refusal = refusal rate on benign samples. Cost per sample: forward passes (sequential, "
        "batched) and prompt + new tokens (means); " + metrics.WALL_TIME_METHOD,
        "",
        _md_table(summary_rows(summary)),
        "",
    ]
    lines += _loading_section(summary.get("benchmarks", []))
    deltas = [(k, d["unsafe_vs_none"]) for k, d in summary["defenses"].items() if "unsafe_vs_none" in d]
    if deltas:
        lines += ["### Change in unsafe rate vs. `none` (paired bootstrap)", ""]
        lines += [f"- `{k}`: {_signed(v['rate'])}{_ci(v['ci'])} over {v['n']} samples" for k, v in deltas]
        lines.append("")
    lines += _detection_section(summary["defenses"])
    cats = sorted({c for d in summary["defenses"].values() for c in d["per_category"]})
    if cats:
        names = list(summary["defenses"])
        rows = [["category", *names]]
        for c in cats:
            row = [c]
            for n in names:
                pc = summary["defenses"][n]["per_category"].get(c)
                row.append(f"{_pct(pc['unsafe_rate'])} (n={pc['n']})" if pc else "-")
            rows.append(row)
        lines += ["## Unsafe rate per category", "", _md_table(rows), ""]
    if len(summary.get("judges", [])) > 1:
        names = list(summary["defenses"])
        rows = [["judge", *names]]
        for j in summary["judges"]:
            rows.append([j, *[_pct(summary["defenses"][n]["judges"][j]["unsafe_rate"]) for n in names]])
        lines += ["## Unsafe rate by judge", "", _md_table(rows), ""]
        lines += ["### Judge agreement (Cohen's kappa on `unsafe`)", ""]
        for a in summary.get("agreement", []):
            k = "n/a" if a["kappa"] is None else f"{a['kappa']:.3f}"
            note = f" ({a['note']})" if a.get("note") else ""
            lines.append(f"- {a['judges'][0]} vs {a['judges'][1]}: kappa {k} over {a['n']} items{note}")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## Defenses", ""]
    for d in manifest.get("defenses", []):
        lines.append(f"- `{d['label']}`: `{json.dumps(d['spec'], sort_keys=True)[:400]}`")
    lines += ["", "## Reproduce", ""]
    for inv in manifest.get("invocations", [])[:1]:
        lines += ["```", reproduce_command(inv.get("command", ""), manifest), "```"]
    v = manifest.get("versions", {})
    lines += [
        "",
        "Versions: "
        + ", ".join(f"{k} {v[k]}" for k in ("vlmshield", "torch", "transformers", "python") if k in v),
        "",
    ]
    return "\n".join(lines)


def _detection_section(defenses: Mapping[str, Any]) -> list[str]:
    """``## Detection``: AUROC of the defenses that score their inputs (see :mod:`vlmshield.eval.detection`)."""
    rows = [["defense", "AUROC", "harmful / benign scored", "flagged harmful", "flagged benign"]]
    for name, d in defenses.items():
        det = d.get("detection")
        if det:
            rows.append(
                [
                    name,
                    _num(det["auroc"], "{:.3f}"),
                    f"{det['harmful']} / {det['benign']}",
                    str(det["flagged_harmful"]),
                    str(det["flagged_benign"]),
                ]
            )
    if len(rows) == 1:
        return []
    return ["## Detection (AUROC of the input scores against the samples' labels)", "", _md_table(rows), ""]


def _padding_line(pad: Mapping[str, Any] | None) -> list[str]:
    if not pad or pad["prompt"]["waste"] is None:
        return []
    other = pad.get("prompt_in_dataset_order")
    versus = (
        f" (in dataset order: {_pct(other)})" if pad.get("order") == "length" and other is not None else ""
    )
    return [
        f"- padding (`{pad['defense']}`, batches in {pad.get('order')} order): {_pct(pad['prompt']['waste'])} "
        f"of prompt positions{versus}, {_pct(pad['decode']['waste'])} of decoding steps"
    ]


def _loading_section(benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """``## Samples lost while loading``: per benchmark and file (``N+``: the file could not be read and
    was skipped with --skip-bad; the entries after the break cannot be counted), and loader warnings."""
    lines: list[str] = []
    for b in benchmarks:
        name = f"{b['name']}{':' + b['variant'] if b.get('variant') else ''}"
        unreadable = set(b.get("unreadable_files") or [])
        for file, n in (b.get("lost_by_file") or {}).items():
            how = f"{n}+ (cannot be read; skipped with --skip-bad)" if file in unreadable else str(n)
            lines.append(f"- `{name}`: `{file}`: {how} samples lost")
        if b.get("samples_lost") and b.get("first_problem"):
            lines.append(f"  - first problem: `{b['first_problem']}`")
        lines += [f"- `{name}`: warning: {w}" for w in b.get("warnings") or []]
    if not lines:
        return []
    return ["## Samples lost while loading", "", *lines, ""]


def reproduce_command(command: str, manifest: Mapping[str, Any]) -> str:
    """``command`` with each benchmark's ``@PATH`` replaced by the absolute path the manifest records
    (a relative path only works from the folder the run was started in)."""
    import shlex

    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    paths = {
        (b.get("name"), b.get("variant")): b["path"] for b in manifest.get("benchmarks", []) if b.get("path")
    }
    by_name: dict[Any, list[str]] = {}
    for (name, _), path in paths.items():
        by_name.setdefault(name, []).append(path)

    def absolute(spec: str) -> str:
        head, at, path = spec.partition("@")
        if not at or not path or Path(path).expanduser().is_absolute():
            return spec
        name, _, variant = head.strip().partition(":")
        found = paths.get((name, variant or None))
        if found is None and len(by_name.get(name, [])) == 1:
            found = by_name[name][0]
        return f"{head}@{found}" if found else spec

    out = []
    flag = None
    for arg in argv:
        if flag in ("--benchmark", "--tasks", "-b"):
            arg = ",".join(absolute(part) for part in arg.split(","))
        elif arg.startswith(("--benchmark=", "--tasks=")):
            key, _, value = arg.partition("=")
            arg = f"{key}={','.join(absolute(part) for part in value.split(','))}"
        out.append(arg)
        flag = arg
    return shlex.join(out)


def _signed(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pts"


def write_report(
    run_dir: str | Path, out: str | Path | None = None, *, summary: Mapping[str, Any] | None = None
) -> ReportFiles:
    """Write the Markdown report (default ``RUN_DIR/report.md``), its plots beside it, and
    ``summary.json`` in the run folder."""
    run = Path(run_dir)
    manifest, store = _open(run)
    store.close()
    data = dict(summary) if summary is not None else summarize_run(run)
    md = Path(out) if out is not None else run / REPORT_NAME
    md.parent.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_tradeoff(data, md.parent / "tradeoff.png"),
        plot_per_category(data, md.parent / "per_category.png"),
    ]
    md.write_text(render_markdown(data, manifest, plots), encoding="utf-8")
    (run / SUMMARY_NAME).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ReportFiles(markdown=md, plots=plots, summary=data)


__all__ = [
    "REPORT_NAME",
    "SUMMARY_NAME",
    "ReportFiles",
    "item_results",
    "plot_per_category",
    "plot_tradeoff",
    "render_markdown",
    "reproduce_command",
    "summarize_run",
    "summary_rows",
    "write_report",
]
