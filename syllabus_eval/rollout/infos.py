"""Per-episode reductions of info entries (Habitat's ``extract_scalars_from_info``; SB3 #410).

Usage (what the episode loop does with ``RolloutSettings.info_keys``)::

    reducer = InfoReducer({"distance": "last", "collisions": "sum"}, size=num_active)
    reducer.add(step, counted)      # after every step: the steps of episodes, per active slot
    reducer.episode(position)       # {"distance": 1.5, "collisions": 3.0} when one ends
    reducer.restart(position)       # its slot's next episode starts from nothing

Each key is reduced over the steps of an episode that have it: ``"last"`` (its value at the
last such step), ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``. An episode whose steps never
had it has no value for it (it is left out of that key's mean and reported as missing).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from syllabus_eval.rollout.envs import StepResult


class InfoReducer:
    """Running reductions of info keys, one entry per active slot (``[A]``), sliced when
    slots pause."""

    def __init__(self, info_keys: Mapping[str, str], size: int) -> None:
        self.reductions = dict(info_keys)
        self.values = {key: np.zeros(size) for key in self.reductions}  # [A] running value
        self.counts = {key: np.zeros(size, dtype=np.int64) for key in self.reductions}  # [A]

    def add(self, step: StepResult, counted: np.ndarray | None) -> None:
        """Take this step's info at every active slot (``counted``: which steps belong to an
        episode; ``None``: all)."""
        for key, reduction in self.reductions.items():
            values, present = step.info_values(key)  # [A], [A]
            if counted is not None:
                present = present & counted
            if not present.any():
                continue
            running, counts = self.values[key], self.counts[key]
            if reduction in ("sum", "mean"):
                running += np.where(present, values, 0.0)
            elif reduction == "last":
                running[present] = values[present]
            else:
                pick = np.maximum if reduction == "max" else np.minimum
                first = present & (counts == 0)
                running[first] = values[first]
                running[present] = pick(running[present], values[present])
            counts += present

    def episode(self, position: int) -> dict[str, float]:
        """The reductions of the episode at ``position`` (keys it reported)."""
        result = {}
        for key, reduction in self.reductions.items():
            count = self.counts[key][position]
            if count:
                value = self.values[key][position]
                result[key] = float(value / count if reduction == "mean" else value)
        return result

    def restart(self, position: int) -> None:
        for key in self.reductions:
            self.values[key][position] = 0.0
            self.counts[key][position] = 0

    def keep(self, rows: np.ndarray) -> None:
        """Keep the active positions ``rows`` only (paused slots are sliced out)."""
        for key in self.reductions:
            self.values[key] = self.values[key][rows]
            self.counts[key] = self.counts[key][rows]
