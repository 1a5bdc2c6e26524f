"""PNG plots of a run summary (matplotlib, Agg canvas; no global pyplot state, no console output).

- :func:`plot_tradeoff`: one point per defense with 95% intervals. The y axis is the unsafe rate when
  harmful samples were scored, else the over-refusal rate (benign-only runs), else the utility score
  (utility-only runs); the panels put it against the other scored rates and the wall time relative to
  ``none``.
- :func:`plot_per_category`: unsafe rate per harmful category, one bar per defense.

Example:
    >>> plot_tradeoff(summary, Path("runs/x/tradeoff.png"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Getter = Callable[[Mapping[str, Any]], tuple[Any, Any]]

__all__ = ["plot_per_category", "plot_tradeoff", "scored_metrics"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _err(value: Any, ci: Sequence[Any] | None) -> list[list[float]]:
    if value is None or not ci or ci[0] is None:
        return [[0.0], [0.0]]
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def scored_metrics(defs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Getter]]:
    """``(axis label, getter -> (value, ci))`` of each rate some defense has a value for, in the order
    unsafe rate, over-refusal, utility."""
    out: list[tuple[str, Getter]] = []
    if any(d.get("unsafe_rate") is not None for d in defs.values()):
        out.append(("unsafe rate", lambda d: (d["unsafe_rate"], d["ci"])))
    if any(d["over_refusal"]["n"] for d in defs.values()):
        out.append(
            ("over-refusal rate (benign)", lambda d: (d["over_refusal"]["rate"], d["over_refusal"]["ci"]))
        )
    if any(d["utility"]["n"] for d in defs.values()):
        out.append(("utility score", lambda d: (d["utility"]["rate"], d["utility"]["ci"])))
    return out


def plot_tradeoff(summary: Mapping[str, Any], path: Path) -> Path:
    """The first scored rate (y) against the other scored rates and wall time vs ``none`` (x)."""
    defs = summary["defenses"]
    rates = scored_metrics(defs)
    y_label, y_get = rates[0] if rates else ("unsafe rate", lambda d: (None, None))
    panels: list[tuple[str, Getter]] = [
        *rates[1:],
        ("wall time relative to none", lambda d: (d["cost"]["wall_time_vs_none"], None)),
    ]
    fig = _figure(4.2 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = _colors(len(defs))
    plotted = 0
    for ax, (xlabel, getter) in zip(axes, panels, strict=True):
        for k, ((name, d), color) in enumerate(zip(defs.items(), colors, strict=True)):
            x, xci = getter(d)
            y, yci = y_get(d)
            if x is None or y is None:
                continue
            ax.errorbar(
                [x],
                [y],
                xerr=_err(x, xci) if xci else None,
                yerr=_err(y, yci),
                fmt="o",
                color=color,
                capsize=3,
                label=name,
            )
            plotted += 1
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5 - 9 * k), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{y_label} ({summary.get('judge')})")
        ax.set_ylim(-0.05, 1.05)
        if "rate" in xlabel or "score" in xlabel:
            ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    if plotted:
        handles, labels = axes[-1].get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        axes[0].text(0.5, 0.5, "nothing scored yet", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle("Safety trade-offs (95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_per_category(summary: Mapping[str, Any], path: Path) -> Path:
    """Grouped horizontal bars: unsafe rate per harmful category, one bar per defense."""
    defs = summary["defenses"]
    cats = sorted({c for d in defs.values() for c in d["per_category"]})
    fig = _figure(7.5, max(2.5, 0.45 * max(1, len(cats)) * max(1, len(defs)) ** 0.5 + 1.2))
    ax = fig.subplots()
    if not cats:
        ax.text(0.5, 0.5, "no harmful samples scored", ha="center", va="center")
        ax.set_axis_off()
    else:
        height = 0.8 / max(1, len(defs))
        for k, ((name, d), color) in enumerate(zip(defs.items(), _colors(len(defs)), strict=True)):
            ys = [i + k * height for i in range(len(cats))]
            vals = [(d["per_category"].get(c) or {}).get("unsafe_rate") or 0.0 for c in cats]
            ax.barh(ys, vals, height=height, color=color, label=name)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cats))], cats, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"unsafe rate ({summary.get('judge')})")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Unsafe rate per category", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
