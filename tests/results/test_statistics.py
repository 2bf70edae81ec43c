"""Uncertainty: intervals that cover the true mean at their rate, Wilson bounds against known
values, the interquartile mean, and results whose every value answers .item()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from syllabus_eval import EpisodeRecord, summarize
from syllabus_eval.results.statistics import bootstrap_ci, iqm, wilson_ci


class TestBootstrap:
    def test_covers_the_true_mean_at_its_rate(self):
        # Skewed returns (exponential, mean 1), 30 episodes, 600 seeded repetitions: a 95%
        # interval covers about 95% of the time (binomial sd ~0.9%). A standard deviation in
        # place of the standard error covers ~100%, a 1.96 / n error ~30%: neither passes.
        rng = np.random.default_rng(0)
        covered = [low <= 1.0 <= high for low, high in (
            bootstrap_ci(rng.exponential(size=30), 0.95, seed=i) for i in range(600))]
        assert 0.92 <= np.mean(covered) <= 0.975

    def test_a_wider_level_gives_a_wider_interval(self):
        data = np.random.default_rng(1).normal(size=50)
        narrow, wide = bootstrap_ci(data, 0.5, 0), bootstrap_ci(data, 0.99, 0)
        assert wide[0] < narrow[0] < data.mean() < narrow[1] < wide[1]

    def test_seeded(self):
        data = np.random.default_rng(2).normal(size=20)
        assert bootstrap_ci(data, 0.95, seed=3) == bootstrap_ci(data, 0.95, seed=3)
        assert bootstrap_ci(data, 0.95, seed=3) != bootstrap_ci(data, 0.95, seed=4)

    def test_degenerate_data(self):
        assert bootstrap_ci([5.0, 5.0, 5.0], 0.95, 0) == (5.0, 5.0)
        assert all(math.isnan(bound) for bound in bootstrap_ci([5.0], 0.95, 0))


class TestWilson:
    @pytest.mark.parametrize("k, n, low, high", [
        # Wilson score intervals at 95% (Newcombe 1998, Table I; Brown, Cai, DasGupta 2001)
        (8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
        (1, 29, 0.0061, 0.1718), (81, 263, 0.2553, 0.3662)])
    def test_known_values(self, k, n, low, high):
        assert wilson_ci(k, n, 0.95) == pytest.approx((low, high), abs=1e-4)


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert iqm([2.0]) == 2.0
    rng = np.random.default_rng(0)
    for size in range(1, 40):  # every remainder of n / 4: SciPy's trimmed mean exactly
        values = rng.exponential(size=size)
        assert iqm(values) == pytest.approx(stats.trim_mean(values, 0.25), rel=1e-12)


class TestResultIntervals:
    def episodes(self, successes):
        rewards = np.random.default_rng(0).normal(10, 3, len(successes))
        return [EpisodeRecord(i % 4, i // 4, float(r), 5, True, False, task=i % 2,
                              success=s) for i, (r, s) in enumerate(zip(rewards, successes))]

    def test_every_mean_gets_an_interval(self):
        records = self.episodes([True] * 14 + [False] * 6)
        result = summarize(records, ci=0.9, seed=7)
        for prefix in ("eval/", "eval/task/0/", "eval/task/1/"):
            assert result[prefix + "reward_ci_low"] < result[prefix + "reward"] < result[
                prefix + "reward_ci_high"]
            assert prefix + "reward_iqm" in result
            assert result[prefix + "success_ci_low"] < result[prefix + "success"] < result[
                prefix + "success_ci_high"]
        assert (result["eval/success_ci_low"], result["eval/success_ci_high"]) == (
            wilson_ci(14, 20, 0.9))
        assert summarize(records, ci=0.9, seed=7) == result  # reproducible
        assert not any(k.endswith(("_ci_low", "_ci_high")) for k in summarize(records, ci=None))

    def test_values_answer_item_and_stay_plain_numbers(self):
        result = summarize(self.episodes([True, False] * 5), step=12, elapsed=1.0)
        items = {k: v.item() for k, v in result.items()}  # as TorchRL's callbacks do
        assert items == dict(result)
        assert all(type(v) in (float, int) for v in items.values())
        assert isinstance(result["eval/num_episodes"].item(), int)
        assert json.loads(json.dumps(result)) == pytest.approx(items)

    @pytest.mark.parametrize("ci", [0, 1, 1.5, "95%"])
    def test_bad_levels(self, ci):
        with pytest.raises(ValueError, match="ci: expected"):
            summarize(self.episodes([True]), ci=ci)
