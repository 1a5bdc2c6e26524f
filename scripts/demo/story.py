"""The demo's story table: every row measured by ``vlmshield eval`` on ``mini`` (keyword judge, 64 new
tokens, greedy, 95% percentile-bootstrap intervals), for the shipped artifacts.

Rows: SmolLM2 (base) and the aligned backbone (stage 1) as checkpoints in the LLaVA shell, text only;
the demo VLM text only (``mini:text``); the demo VLM with an image (``mini``, vlsafe variant) undefended
and under ``coca``, ``ecso``, ``cmrm`` at dataset level (exactly ``vlmshield eval`` with no arguments,
whose wall time is recorded) and ``cmrm:level=sample``. Each run folder is under
``.cache/demo-build/story/`` and resumes when re-run; a Markdown table is printed and written to
``.cache/demo-build/story/table.md``.

    .venv/bin/python scripts/demo/story.py
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from vlmshield.demo._build import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".cache" / "demo-build"
OUT = BUILD / "story"
VLMSHIELD = str(ROOT / ".venv" / "bin" / "vlmshield")


def run(name: str, args: list[str]) -> tuple[dict[str, Any], float]:
    out = OUT / name
    t0 = time.time()
    if not (out / "summary.json").exists():
        subprocess.run([VLMSHIELD, "eval", *args, "-o", str(out), "--no-progress"], check=True)
    return json.loads((out / "summary.json").read_text()), time.time() - t0


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}".rstrip("0").rstrip(".")


def cell(rate: float, ci: list[float | None]) -> str:
    return f"{pct(rate)}% [{pct(ci[0])}, {pct(ci[1])}]"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = save_checkpoint(BUILD / "story-ckpt-base", ())
    aligned = save_checkpoint(BUILD / "story-ckpt-aligned", ("text",))
    rows: list[tuple[str, str, dict[str, Any]]] = []
    s, _ = run("base", ["--model", str(base), "--benchmark", "mini:text", "--defense", "none"])
    rows.append(("SmolLM2-135M-Instruct (base)", "text", s["defenses"]["none"]))
    s, _ = run("aligned", ["--model", str(aligned), "--benchmark", "mini:text", "--defense", "none"])
    rows.append(("aligned backbone (stage 1)", "text", s["defenses"]["none"]))
    s, _ = run("demo-text", ["--benchmark", "mini:text", "--defense", "none"])
    rows.append(("demo VLM", "text", s["defenses"]["none"]))
    s, wall = run("default", [])
    timing = {"vlmshield eval (no arguments), s": round(wall, 1)}
    for label, d in s["defenses"].items():
        name = "cmrm (dataset, shipped vectors)" if label.startswith("cmrm") else label
        rows.append((f"demo VLM, `{name}`", "+ image", d))
    s, _ = run("cmrm-sample", ["--defense", "cmrm:level=sample"])
    for label, d in s["defenses"].items():
        if label != "none":
            rows.append((f"demo VLM, `{label}:level=sample`", "+ image", d))
    lines = [
        "| model / defense | input | harmful refused (95% CI), n=40 | over-refusal (95% CI), n=20 | x none |",
        "|---|---|---|---|---|",
    ]
    for name, mode, d in rows:
        over = d["over_refusal"]
        speed = d.get("cost", {}).get("wall_time_vs_none") if mode == "+ image" else None
        lines.append(
            f"| {name} | {mode} | {cell(d['refusal_rate'], d['refusal_ci'])} | "
            f"{cell(over['rate'], over['ci'])} | {'' if speed is None else f'{speed:.2f}x'} |"
        )
    table = "\n".join(lines)
    (OUT / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
