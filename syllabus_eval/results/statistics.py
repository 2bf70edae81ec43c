"""Uncertainty of evaluation numbers: bootstrap intervals, the interquartile mean, Wilson bounds.

Usage::

    from syllabus_eval.results.statistics import bootstrap_ci, iqm, wilson_ci

    low, high = bootstrap_ci(returns, confidence=0.95, seed=0)   # of the mean return
    iqm(returns)                                                 # mean of the middle 50%
    low, high = wilson_ci(successes=17, trials=20, confidence=0.95)

A handful of evaluation episodes gives a noisy mean; a number without its interval invites
reading noise as progress (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice"). The computations are SciPy's: ``scipy.stats.bootstrap`` (BCa, the bias-corrected
and accelerated percentile interval, with :data:`RESAMPLES` resamples from a seeded generator,
so the same episodes always give the same interval) and the Wilson score interval of
``scipy.stats.binomtest``; the interquartile mean is what ``scipy.stats.trim_mean(x, 0.25)``
gives, computed with NumPy (SciPy's call cost 0.4 ms, 1% of a CartPole evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 2000  # bootstrap resamples: ~10 ms for 200 episodes, Monte Carlo error << width


def bootstrap_ci(values: Sequence[float], confidence: float, seed: int | Sequence[int]
                 ) -> tuple[float, float]:
    """The BCa bootstrap interval of the mean of ``values``.

    Fewer than two values have no interval (NaN, NaN); values that are all equal have the
    degenerate interval (value, value), where resampling has nothing to tell.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return math.nan, math.nan
    if np.ptp(data) == 0:
        return float(data[0]), float(data[0])
    interval = stats.bootstrap((data,), np.mean, confidence_level=confidence,
                               n_resamples=RESAMPLES, method="BCa",
                               rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def iqm(values: Sequence[float]) -> float:
    """The interquartile mean: the mean of the values between the 25th and 75th percentiles
    (Agarwal et al. 2021), robust to a few outlying episodes."""
    data = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(0.25 * data.size)  # scipy.stats.trim_mean's count, from each end
    return float(data[cut:data.size - cut].mean())


def wilson_ci(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a success rate (well behaved near 0 and 1, unlike the
    normal approximation)."""
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
