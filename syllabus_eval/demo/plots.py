"""The demo's plot: evaluation return of training and held-out tasks, and PLR's task
probabilities over training.

Usage::

    plot_training(evaluations, priorities, "runs/demo/demo.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from syllabus_eval.results.report import draw_curve, pyplot, save_figure


def _trailing_mean(values: Sequence[float], window: int) -> list[float]:
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1)
            for i in range(len(values))]


def plot_training(evaluations: Sequence[Mapping[str, float]],
                  priorities: Sequence[tuple[int, Mapping[str, float]]],
                  path: str | Path) -> Path:
    """Evaluation return (the ``train`` and held-out ``test`` suites with their confidence
    bands, and each training task) and curriculum task probabilities over training steps.

    Args:
        evaluations: metrics dicts with ``eval/step`` and the ``train`` and ``test`` suites'
            rewards (``eval/train/...``, ``eval/test/...``), per task inside ``train``.
        priorities: ``(step, {task: probability})`` pairs.
        path: the PNG to write.
    """
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(8, 7), sharex=True)
    draw_curve(top, evaluations, "eval/train/", "training tasks", color="k", marker="o", lw=2)
    draw_curve(top, evaluations, "eval/test/", "held-out tasks", color="tab:red", marker="s",
               lw=2)
    tasks = list(priorities[0][1]) if priorities else []
    for task in tasks:
        draw_curve(top, [{k: v for k, v in m.items() if "_ci_" not in k} for m in evaluations],
                   f"eval/train/task/{task}/", task, alpha=0.7, lw=1, ls="--")
    top.set_ylabel("evaluation return\n(bands: 95% bootstrap intervals)")
    top.legend(fontsize="small", ncol=3)
    top.grid(alpha=0.3)
    # PLR's distribution jumps at every update (the latest score sets the ranks): a trailing
    # moving average shows the share of episodes each task got.
    window = max(1, len(priorities) // 15)
    x = [step for step, _ in priorities]
    for task in tasks:
        bottom.plot(x, _trailing_mean([p[task] for _, p in priorities], window), "-",
                    label=task)
    if priorities:
        bottom.set_ylim(0, 1)
        bottom.legend(fontsize="small", loc="upper right", ncol=3)
        bottom.grid(alpha=0.3)
    bottom.set_ylabel(f"sampling probability\n(mean of the last {window} updates)")
    bottom.set_xlabel("training env steps")
    return save_figure(fig, path)
