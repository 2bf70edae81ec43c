"""Tables and curves for people: the command line, the demo and the benchmarks.

Usage::

    print(format_table([["CartPole", "1.05x"]], ["agent", "ratio"]))   # Markdown
    plot_curves(results, {"all": "eval/", "a": "eval/task/a/"}, "curve.png")

Curves draw results against ``eval/step``, with the confidence bands the results carry
(matplotlib, imported when a plot is drawn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A Markdown table, aligned for the terminal and pasteable into a README."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def draw_curve(axes: Any, results: Sequence[Mapping[str, float]], prefix: str, label: str,
               metric: str = "reward", **style: Any) -> None:
    """One metric of a group of results (``<prefix><metric>``, e.g. ``eval/task/a/reward``)
    against ``eval/step`` on matplotlib ``axes``, with its confidence band
    (``<metric>_ci_low`` / ``_ci_high``) where the results have one."""
    key = prefix + metric
    points = sorted((r["eval/step"], r[key], r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high"))
                    for r in results if key in r and "eval/step" in r)
    if not points:
        return
    steps, values, lows, highs = zip(*points)
    (line,) = axes.plot(steps, values, label=label, **style)
    if all(low is not None for low in lows) and all(high is not None for high in highs):
        axes.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.15, lw=0)


def plot_curves(results: Sequence[Mapping[str, float]], groups: Mapping[str, str],
                path: str | Path, metrics: Sequence[str] = ("reward", "success")) -> Path:
    """A PNG with one panel per metric against ``eval/step`` and one curve per group.

    Args:
        results: metrics dicts (``EvalResult`` s), each with ``eval/step``.
        groups: ``{label: prefix}``, e.g. ``{"all": "eval/", "a": "eval/task/a/"}``.
        path: the PNG to write.
        metrics: the metric names to plot; those no result has are left out.
    """
    plt = pyplot()
    shown = [m for m in metrics if any(p + m in r for r in results for p in groups.values())]
    fig, panels = plt.subplots(max(1, len(shown)), 1, figsize=(8, 3.5 * max(1, len(shown))),
                               sharex=True, squeeze=False)
    for axes, metric in zip(panels[:, 0], shown):
        for label, prefix in groups.items():
            draw_curve(axes, results, prefix, label, metric, marker="o", ms=3)
        axes.set_ylabel(f"evaluation {metric.replace('_', ' ')}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", ncol=3)
    panels[-1, 0].set_xlabel("training env steps")
    return save_figure(fig, path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (its folder made) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
