"""Generalized advantage estimation, shared by the PPO loop and Prioritized Level Replay.

Usage::

    from syllabus_eval.query.advantages import gae

    # One segment of one episode, [T]: bootstrap from V(s_T), or 0 where s_T is terminal.
    advantages = gae(rewards, values, next_value=0.0, gamma=0.99, lam=0.95)
    # A rollout of B envs, [T, B], in CleanRL's convention: dones[t] = 1 where the
    # observation at t starts a new episode.
    advantages = gae(rewards, values, next_value, 0.99, 0.95, dones=dones, next_done=next_done)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from syllabus_eval.errors import bad_argument


def gae(rewards: ArrayLike, values: ArrayLike, next_value: ArrayLike, gamma: float, lam: float,
        *, dones: ArrayLike | None = None, next_done: ArrayLike | None = None) -> np.ndarray:
    """Generalized advantage estimates (Schulman et al. 2016, "High-dimensional continuous
    control using generalized advantage estimation", eq. 16), vectorised over envs.

    ``A_t = sum_k (gamma lam)^k delta_{t+k}`` with ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``,
    the sum cut at episode ends: no value is bootstrapped across a new episode's first
    observation.

    Args:
        rewards: ``r_0 .. r_{T-1}``, ``[T]`` or ``[T, B]``.
        values: ``V(s_0) .. V(s_{T-1})``, shaped like ``rewards``.
        next_value: ``V(s_T)`` to bootstrap from, ``[]`` or ``[B]``; 0 (or ``next_done`` 1)
            where ``s_T`` is terminal.
        gamma: the discount factor.
        lam: GAE's lambda.
        dones: shaped like ``rewards``; ``dones[t] = 1`` where ``s_t`` starts a new episode
            (CleanRL's convention: the flag that came with the observation). ``None``: no
            episode starts inside the rollout.
        next_done: ``[]`` or ``[B]``; 1 where ``s_T`` starts a new episode, so that nothing is
            bootstrapped from ``next_value`` there. ``None``: 0.

    Returns:
        The advantages, float64, shaped like ``rewards``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)  # [T, ...]
    values = np.asarray(values, dtype=np.float64)  # [T, ...]
    next_value = np.asarray(next_value, dtype=np.float64)  # [...]
    if rewards.ndim not in (1, 2):
        raise bad_argument("rewards", "shape [T] or [T, B]", rewards)
    if values.shape != rewards.shape:
        raise bad_argument("values", f"the shape of rewards {rewards.shape}", values)
    if next_value.shape != rewards.shape[1:]:
        raise bad_argument("next_value", f"shape {rewards.shape[1:]}", next_value)
    if len(rewards) == 0:
        return rewards
    following = np.concatenate((values[1:], next_value[None]))  # V(s_{t+1}): [T, ...]
    if dones is None and next_done is None:
        live: np.ndarray | float = 1.0
    else:
        # live[t] = 0 where s_{t+1} starts a new episode: r_t was the episode's last reward.
        starts = np.zeros_like(rewards)
        if dones is not None:
            dones = np.asarray(dones, dtype=np.float64)
            if dones.shape != rewards.shape:
                raise bad_argument("dones", f"the shape of rewards {rewards.shape}", dones)
            starts[:-1] = dones[1:]
        if next_done is not None:
            next_done = np.asarray(next_done, dtype=np.float64)
            if next_done.shape != rewards.shape[1:]:
                raise bad_argument("next_done", f"shape {rewards.shape[1:]}", next_done)
            starts[-1] = next_done
        live = 1.0 - starts
    deltas = rewards + gamma * live * following - values  # [T, ...]
    decay = gamma * lam * live  # [T, ...] or a number
    if rewards.ndim == 1:
        return _accumulate_one(deltas, decay)
    decay = np.broadcast_to(decay, deltas.shape)  # [T, B]
    # Backwards: A_t = delta_t + gamma lam live_t A_{t+1}, one row of B envs at a time.
    advantages = np.empty_like(deltas)
    running = np.zeros(deltas.shape[1])  # [B]
    for t in range(len(deltas) - 1, -1, -1):
        running = advantages[t] = deltas[t] + decay[t] * running
    return advantages


def _accumulate_one(deltas: np.ndarray, decay: np.ndarray | float) -> np.ndarray:
    """The backward recursion of one env, ``[T]``, on Python floats.

    PLR scores every segment on its own in its worker's hot loop: with one env, numpy's
    per-call overhead would cost more than the arithmetic.
    """
    advantages = deltas.tolist()
    decays = decay.tolist() if isinstance(decay, np.ndarray) else [decay] * len(advantages)
    running = 0.0
    for t in range(len(advantages) - 1, -1, -1):
        running = advantages[t] = advantages[t] + decays[t] * running
    return np.array(advantages)
