"""Metrics from episode records: names, values, per-task keys, custom metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from syllabus_eval import EpisodeRecord, EvalResult, summarize


def record(env: int, episode: int, reward: float, length: int, task=None, success=None,
           truncated=False, cut=False):
    return EpisodeRecord(env, episode, reward, length, terminated=not truncated,
                         truncated=truncated, task=task, success=success, cut=cut)


EPISODES = [
    record(0, 0, 1.0, 2, task="easy", success=True),
    record(0, 1, 3.0, 4, task="hard", success=False, truncated=True),  # the env's time limit
    record(1, 0, 5.0, 6, task="easy", success=False),
    record(1, 1, 7.0, 8, task="hard", truncated=True, cut=True),  # max_steps; no success
]


class TestMetrics:
    def test_flat_metrics(self):
        result = summarize(EPISODES, step=100, elapsed=2.0, ci=None)
        assert result == pytest.approx({
            "eval/reward": 4.0, "eval/reward_std": float(np.std([1, 3, 5, 7])),
            "eval/reward_iqm": 4.0,  # the middle two of 1, 3, 5, 7
            "eval/episode_length": 5.0, "eval/num_episodes": 4, "eval/fps": 10.0,
            "eval/step": 100, "eval/success": 1 / 3,
            "eval/truncated": 2, "eval/max_steps_cut": 1,
            "eval/task/easy/reward": 3.0, "eval/task/easy/episode_length": 4.0,
            "eval/task/easy/reward_std": 2.0, "eval/task/easy/reward_iqm": 3.0,
            "eval/task/easy/num_episodes": 2, "eval/task/easy/success": 0.5,
            "eval/task/easy/truncated": 0, "eval/task/easy/max_steps_cut": 0,
            "eval/task/hard/reward": 5.0, "eval/task/hard/episode_length": 6.0,
            "eval/task/hard/reward_std": 2.0, "eval/task/hard/reward_iqm": 5.0,
            "eval/task/hard/num_episodes": 2, "eval/task/hard/success": 0.0,
            "eval/task/hard/truncated": 2, "eval/task/hard/max_steps_cut": 1,
        })
        assert isinstance(result, dict) and isinstance(result, EvalResult)
        assert result.step == 100 and result.metrics == dict(result)

    def test_records_are_kept_in_slot_order(self):
        result = summarize(reversed(EPISODES))
        assert result.episodes == tuple(EPISODES)
        assert result == summarize(EPISODES)  # the order they came in does not matter

    def test_no_step_no_tasks_no_success(self):
        result = summarize([record(0, 0, 2.0, 3)], ci=None)
        assert set(result) == {"eval/reward", "eval/reward_std", "eval/reward_iqm",
                               "eval/episode_length", "eval/num_episodes", "eval/truncated",
                               "eval/max_steps_cut"}

    def test_no_episodes(self):
        with pytest.raises(ValueError, match="episodes: expected at least one"):
            summarize([])


class TestCustomMetrics:
    def test_metrics_fn_keys_go_under_eval(self):
        def metrics_fn(episodes):
            return {"longest": max(r.length for r in episodes), "eval/total": torch.tensor(16.),
                    "half": np.float32(0.5)}

        result = summarize(EPISODES, metrics_fn=metrics_fn)
        assert (result["eval/longest"], result["eval/total"], result["eval/half"]) == (8, 16, .5)

    @pytest.mark.parametrize(("metrics", "message"), [
        ({"reward": 1.0}, "metrics_fn: its metric 'reward' clashes"),
        ({"name": "text"}, r"metrics_fn\(\)\['name'\]: expected a number"),
    ])
    def test_bad_custom_metrics(self, metrics, message):
        with pytest.raises(ValueError, match=message):
            summarize(EPISODES, metrics_fn=lambda episodes: metrics)
