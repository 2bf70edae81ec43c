"""Side-by-side timing: candidates interleaved in one process, so machine noise hits all alike.

Usage::

    samples = interleaved({"ours": run_ours, "theirs": run_theirs}, rounds=5)  # f(round)
    print(median_ratio(samples["ours"], samples["theirs"]))
    print(ratio_text(samples["ours"], samples["theirs"]))  # "0.98x (0.91-1.04)": median (range)
    per_call_seconds({"raw": raw, "ours": ours})          # seconds per call, per round
    ppo_seconds(PPOTrainer(envs, agent, seed=0), iterations=8)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from syllabus_eval.demo.ppo import IterationStats, PPOTrainer

Sample = TypeVar("Sample")


def interleaved(candidates: Mapping[str, Callable[[int], Sample]], rounds: int
                ) -> dict[str, list[Sample]]:
    """What each candidate measures, round by round: ``{name: [round 0, round 1, ...]}``.

    Within a round the candidates run in turn, so that drift on a shared machine (other jobs,
    CPU frequency) hits them alike, and each round starts one candidate later than the one
    before: on this machine the first run of a round was measured a few percent faster than the
    same run later in it, and no candidate should always get that place. Each is called with
    the round's index, e.g. as a seed.
    """
    names = list(candidates)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_ in range(rounds):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            samples[name].append(candidates[name](round_))
    return samples


def median_ratio(values: Sequence[float], baselines: Sequence[float]) -> float:
    """The median over rounds of ``value / baseline`` of the same round.

    A ratio within a round cancels drift between rounds, which a ratio of medians keeps.
    """
    return statistics.median(value / baseline for value, baseline in zip(values, baselines))


def ratio_text(values: Sequence[float], baselines: Sequence[float], digits: int = 2) -> str:
    """The ratio of each round, as ``median (min-max)`` over rounds: ``"0.98x (0.91-1.04)"``.

    The range shows how noisy the machine was; the median is the figure to quote.
    """
    ratios = [value / baseline for value, baseline in zip(values, baselines)]
    return (f"{statistics.median(ratios):.{digits}f}x "
            f"({min(ratios):.{digits}f}-{max(ratios):.{digits}f})")


def per_call_seconds(candidates: dict[str, Callable[[], object]], calls: int = 200,
                     rounds: int = 7, before_each: Callable[[], object] | None = None
                     ) -> dict[str, list[float]]:
    """Seconds per call of each candidate, round by round (interleaved rounds).

    ``before_each`` runs untimed before every call (e.g. changing the training weights).
    """
    for fn in candidates.values():  # warm-up
        for _ in range(max(3, calls // 10)):
            fn()

    def mean_seconds(fn: Callable[[], object]) -> Callable[[int], float]:
        def measure(_round: int) -> float:
            total = 0.0
            for _ in range(calls):
                if before_each is not None:
                    before_each()
                start = time.perf_counter()
                fn()
                total += time.perf_counter() - start
            return total / calls
        return measure

    return interleaved({name: mean_seconds(fn) for name, fn in candidates.items()}, rounds)


def ppo_seconds(trainer: PPOTrainer, iterations: int,
                after_update: Callable[[IterationStats], object] | None = None) -> float:
    """Wall-clock seconds of ``iterations`` PPO iterations (rollout and update) of ``trainer``.

    ``after_update`` runs, timed, after every update: what the training loop does besides
    training (e.g. start an evaluation).
    """
    config = trainer.config
    steps = iterations * config.num_steps * trainer.envs.num_envs
    start = time.perf_counter()
    for stats in trainer.iterate(total_steps=steps):
        if after_update is not None:
            after_update(stats)
    return time.perf_counter() - start
