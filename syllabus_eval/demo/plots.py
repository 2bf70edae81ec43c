"""The demo's plot: evaluation return per task and PLR's task probabilities over training.

Usage::

    plot_training(evaluations, priorities, "runs/demo/demo.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _trailing_mean(values: Sequence[float], window: int) -> list[float]:
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1)
            for i in range(len(values))]


def plot_training(evaluations: Sequence[Mapping[str, float]],
                  priorities: Sequence[tuple[int, Mapping[str, float]]],
                  path: str | Path) -> Path:
    """Evaluation return per task and curriculum task probabilities over training steps.

    Args:
        evaluations: metrics dicts with ``eval/step``, ``eval/reward`` and per-task rewards.
        priorities: ``(step, {task: probability})`` pairs.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    steps = [m["eval/step"] for m in evaluations]
    top.plot(steps, [m["eval/reward"] for m in evaluations], "k-o", lw=2, label="all tasks")
    tasks = list(priorities[0][1]) if priorities else []
    for task in tasks:
        key = f"eval/task/{task}/reward"
        top.plot(steps, [m.get(key, float("nan")) for m in evaluations], "-", alpha=0.7,
                 label=task)
    top.set_ylabel("evaluation return")
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
