"""Metrics from the env's info: known per-episode reductions, missing keys reported as such, per
task, on the records, through every kind of env slots."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from syllabus_eval import (
    EnvSpec,
    EpisodeSettings,
    EvalRunner,
    RolloutSettings,
    make_envs,
    run_episodes,
)
from syllabus_eval.adapters import DummyEvaluator
from tests.fake_envs import LengthEnv


class InfoEnv(gym.Wrapper):
    """A LengthEnv whose step ``t`` reports ``gain = t`` and ``peak = 10 - t``, and, at the
    last step of episodes of even length only, ``bonus = 7``: known sums, maxima and
    absences."""

    def __init__(self) -> None:
        super().__init__(LengthEnv())

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        t = self.env.unwrapped.t
        info = {**info, "gain": t, "peak": 10 - t}
        if terminated and t % 2 == 0:
            info["bonus"] = 7
        return obs, reward, terminated, truncated, info


KEYS = {"gain": "sum", "peak": "max", "bonus": "last"}


def expected(length: int) -> dict[str, float]:
    return {"gain": length * (length + 1) / 2, "peak": 9.0}


def check(records) -> None:
    for record in records:
        assert {k: record.info[k] for k in ("gain", "peak")} == expected(record.length)
        assert record.info.get("bonus") == (7 if record.length % 2 == 0 else None)


@pytest.mark.parametrize("make", [
    lambda: make_envs(InfoEnv, 4),
    lambda: gym.vector.SyncVectorEnv([InfoEnv] * 4),
    lambda: gym.vector.SyncVectorEnv([InfoEnv] * 4,
                                     autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)],
    ids=["pool", "next-step", "same-step"])
def test_known_reductions_through_every_kind_of_slots(make):
    envs = make()
    records = run_episodes(DummyEvaluator(LengthEnv.action_space, seed=0), envs,
                           RolloutSettings(10, info_keys=KEYS))
    check(records)
    envs.close()


@pytest.mark.parametrize("reduction, value", [
    ("last", lambda n: n), ("sum", lambda n: n * (n + 1) / 2), ("mean", lambda n: (n + 1) / 2),
    ("max", lambda n: n), ("min", lambda n: 1)])
def test_each_reduction(reduction, value):
    envs = make_envs(InfoEnv, 2)
    for record in run_episodes(DummyEvaluator(LengthEnv.action_space), envs,
                               RolloutSettings(4, info_keys={"gain": reduction})):
        assert record.info["gain"] == value(record.length)
    envs.close()


def test_metrics_per_task_and_missing_ones():
    seen = []
    with EvalRunner(EnvSpec(InfoEnv, num_envs=2), DummyEvaluator(LengthEnv.action_space, seed=0),
                    num_episodes=8, tasks=[0, 1],
                    metrics_fn=lambda episodes: seen.extend(episodes) or {},
                    episodes=EpisodeSettings(info_keys={**KEYS, "absent": "sum"})) as runner:
        result = runner.evaluate()
    check(result.episodes)
    assert seen == list(result.episodes)  # metrics_fn's records carry the values too
    gains = [r.info["gain"] for r in result.episodes]
    assert result["eval/info/gain"] == pytest.approx(np.mean(gains))
    odd = sum(r.length % 2 for r in result.episodes)
    assert 0 < odd < 8  # both kinds of episodes
    assert result["eval/info/bonus"] == 7.0 and result["eval/info/bonus/missing"] == odd
    assert result["eval/info/gain/missing"] == 0
    assert np.isnan(result["eval/info/absent"]) and result["eval/info/absent/missing"] == 8
    for task in (0, 1):
        mine = [r.info["gain"] for r in result.episodes if r.task == task]
        assert result[f"eval/task/{task}/info/gain"] == pytest.approx(np.mean(mine))


def test_a_value_that_is_no_number():
    class TextEnv(InfoEnv):
        def step(self, action: Any):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, terminated, truncated, {**info, "gain": "lots"}

    envs = make_envs(TextEnv, 2)
    with pytest.raises(ValueError, match=r"info_keys: expected info\['gain'\] to be a number"):
        run_episodes(DummyEvaluator(LengthEnv.action_space), envs,
                     RolloutSettings(2, info_keys={"gain": "sum"}))
    envs.close()


@pytest.mark.parametrize("info_keys, message", [
    (["gain"], "info_keys: expected a dict"),
    ({"gain": "median"}, r"info_keys\['gain'\]: expected one of \['last', 'sum'"),
    ({"a/b": "sum"}, "info_keys: expected info keys that are names without '/'"),
])
def test_bad_info_keys(info_keys, message):
    with pytest.raises(ValueError, match=message):
        RolloutSettings(2, info_keys=info_keys)
