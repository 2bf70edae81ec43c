"""Generalized advantage estimation, as PPO (rollouts of B envs) and PLR (segments) use it.

The hand-worked cases are in ``tests/test_ppo.py`` and ``tests/curricula/test_plr.py``; these
check that the shapes and conventions agree with each other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from syllabus_eval.query.advantages import gae

GAMMA, LAMBDA = 0.9, 0.8


def rollout(T: int = 12, B: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"rewards": rng.normal(size=(T, B)), "values": rng.normal(size=(T, B)),
            "next_value": rng.normal(size=B)}


class TestOneEnvAndBatchAgree:
    def test_each_column_is_its_own_segment(self) -> None:
        data = rollout()
        batched = gae(data["rewards"], data["values"], data["next_value"], GAMMA, LAMBDA)
        for b in range(3):
            alone = gae(data["rewards"][:, b], data["values"][:, b], data["next_value"][b],
                        GAMMA, LAMBDA)
            np.testing.assert_allclose(batched[:, b], alone)

    def test_with_episode_starts(self) -> None:
        data = rollout()
        dones = np.zeros((12, 3))
        dones[[2, 7], [0, 2]] = 1.0
        next_done = np.array([0.0, 1.0, 0.0])
        batched = gae(**data, gamma=GAMMA, lam=LAMBDA, dones=dones, next_done=next_done)
        for b in range(3):
            alone = gae(data["rewards"][:, b], data["values"][:, b], data["next_value"][b],
                        GAMMA, LAMBDA, dones=dones[:, b], next_done=next_done[b])
            np.testing.assert_allclose(batched[:, b], alone)


class TestEpisodeStarts:
    def test_an_episode_start_splits_the_rollout_into_segments(self) -> None:
        # dones[5] = 1: steps 0-4 end an episode (nothing bootstrapped), steps 5-11 bootstrap
        # from next_value.
        data = {key: value[:, 0] if value.ndim == 2 else value[0]
                for key, value in rollout().items()}
        dones = np.zeros(12)
        dones[5] = 1.0
        split = gae(**data, gamma=GAMMA, lam=LAMBDA, dones=dones)
        first = gae(data["rewards"][:5], data["values"][:5], 0.0, GAMMA, LAMBDA)
        second = gae(data["rewards"][5:], data["values"][5:], data["next_value"], GAMMA, LAMBDA)
        np.testing.assert_allclose(split, np.concatenate([first, second]))

    def test_next_done_is_a_terminal_next_value(self) -> None:
        data = rollout()
        np.testing.assert_allclose(
            gae(**data, gamma=GAMMA, lam=LAMBDA, next_done=np.ones(3)),
            gae(data["rewards"], data["values"], np.zeros(3), GAMMA, LAMBDA))

    def test_lambda_one_gives_discounted_returns_minus_values(self) -> None:
        rewards, values = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
        returns = [1.0 + GAMMA * 2.0 + GAMMA**2 * 3.0, 2.0 + GAMMA * 3.0, 3.0]
        np.testing.assert_allclose(gae(rewards, values, 0.0, GAMMA, 1.0), returns - values)


class TestInputs:
    def test_float32_tensors_and_lists_give_float64(self) -> None:
        from_lists = gae([1.0, 0.0], [0.5, 0.25], 1.0, GAMMA, LAMBDA)
        from_tensors = gae(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [0.25]]),
                           torch.tensor([1.0]), GAMMA, LAMBDA)
        assert from_lists.dtype == from_tensors.dtype == np.float64
        np.testing.assert_allclose(from_tensors[:, 0], from_lists)

    def test_an_empty_segment_has_no_advantages(self) -> None:
        assert gae([], [], 0.0, GAMMA, LAMBDA).shape == (0,)

    @pytest.mark.parametrize(("arguments", "message"), [
        ({"values": np.zeros((4, 2))}, r"values: expected the shape of rewards \(4, 3\)"),
        ({"next_value": np.zeros(2)}, r"next_value: expected shape \(3,\)"),
        ({"dones": np.zeros((3, 3))}, r"dones: expected the shape of rewards \(4, 3\)"),
        ({"next_done": 0.0}, r"next_done: expected shape \(3,\)"),
        ({"rewards": np.zeros((4, 3, 1))}, r"rewards: expected shape \[T\] or \[T, B\]"),
    ])
    def test_shapes_that_do_not_fit_name_the_argument(self, arguments, message) -> None:
        given = {"rewards": np.zeros((4, 3)), "values": np.zeros((4, 3)),
                 "next_value": np.zeros(3), **arguments}
        with pytest.raises(ValueError, match=message):
            gae(**given, gamma=GAMMA, lam=LAMBDA)
