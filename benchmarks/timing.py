"""Side-by-side timing: candidates interleaved in one process, so machine noise hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call_seconds(candidates: dict[str, Callable[[], object]], calls: int = 200,
                     rounds: int = 7, before_each: Callable[[], object] | None = None
                     ) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in interleaved rounds.

    ``before_each`` runs untimed before every call (e.g. changing the training weights).
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up
        for _ in range(max(3, calls // 10)):
            fn()
    for _ in range(rounds):
        for name, fn in candidates.items():
            total = 0.0
            for _ in range(calls):
                if before_each is not None:
                    before_each()
                start = time.perf_counter()
                fn()
                total += time.perf_counter() - start
            samples[name].append(total / calls)
    return {name: statistics.median(times) for name, times in samples.items()}
