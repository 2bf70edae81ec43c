"""The envs an evaluation runs on, seen as env slots that the episode loop steps and resets.

Usage::

    from syllabus_eval import make_envs

    envs = make_envs(lambda: gym.make("CartPole-v1"), num_envs=8)   # an EnvPool of our own
    envs = make_envs(lambda: gym.make_vec("CartPole-v1", 8), 8)      # a VectorEnv, as it is

Two kinds of slots, one interface (``reset_slots``, ``step_slots``, ``observations``): an
:class:`EnvPool` of single envs that steps only the active slots, and :class:`VectorSlots`, a
Gymnasium vector env whose sub-envs are all stepped, with its autoreset mode read from its
metadata (the rules are in :mod:`syllabus_eval.rollout`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import create_empty_array

from syllabus_eval.errors import (
    bad_argument,
    describe,
)


class StepResult:
    """What stepping the active slots gave, one entry per active slot (``[A]``).

    Attributes:
        rewards: ``[A]`` float64.
        terminated, truncated: ``[A]`` bool.
        ended: ``[A]`` bool: ``terminated | truncated``.
        restarted: ``[A]`` bool: ended and already began the next episode (``SAME_STEP``);
            ``None`` for the other kinds of slots.
        reset_step: ``[A]`` bool: an autoreset step (``NEXT_STEP``), no step of any episode;
            ``None`` where there is none.
    """

    __slots__ = ("ended", "reset_step", "restarted", "rewards", "terminated", "truncated")

    def __init__(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                 ended: np.ndarray, restarted: np.ndarray | None = None,
                 reset_step: np.ndarray | None = None) -> None:
        self.rewards, self.terminated, self.truncated = rewards, terminated, truncated
        self.ended, self.restarted, self.reset_step = ended, restarted, reset_step

    def final_info(self, position: int) -> dict:
        """The info of the step at active ``position`` (the last of its episode, if it ended)."""
        raise NotImplementedError

    def info_values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``info[key]`` of this step's info at each active position, as float64 ``[A]``, and
        where it is present ``[A]`` bool."""
        raise NotImplementedError


class _PoolStep(StepResult):
    """A step of an :class:`EnvPool`: one info dict per active slot."""

    __slots__ = ("infos",)

    def __init__(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                 infos: Sequence[dict]) -> None:
        super().__init__(rewards, terminated, truncated, terminated | truncated)
        self.infos = infos

    def final_info(self, position: int) -> dict:
        return self.infos[position]

    def info_values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        present = np.fromiter((key in info for info in self.infos), bool, len(self.infos))
        values = np.zeros(len(self.infos))
        for position in np.flatnonzero(present).tolist():
            values[position] = _number(self.infos[position][key], key)
        return values, present


class _VectorStep(StepResult):
    """A step of :class:`VectorSlots`: the vector env's batched info (``key``, mask ``_key``)."""

    __slots__ = ("index", "infos")

    def __init__(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                 ended: np.ndarray, restarted: np.ndarray | None,
                 reset_step: np.ndarray | None, infos: dict, index: np.ndarray | None) -> None:
        # One per step: set here rather than through StepResult.__init__ (a call saved).
        self.rewards, self.terminated, self.truncated = rewards, terminated, truncated
        self.ended, self.restarted, self.reset_step = ended, restarted, reset_step
        self.infos, self.index = infos, index  # index None: every sub-env is active

    def final_info(self, position: int) -> dict:
        if not self.infos:  # the common case (CartPole's vector envs report nothing)
            return {}
        slot = position if self.index is None else self.index[position]
        if self.restarted is not None and self.restarted[position]:  # SAME_STEP: moved aside
            return _unbatch_info(self.infos.get("final_info", {}), slot)
        return _unbatch_info(self.infos, slot)

    def info_values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        values, present = self._batched(self.infos, key)
        if self.restarted is not None and self.restarted.any():
            # SAME_STEP: the top-level info of a restarted sub-env is its reset's
            ended_values, ended_present = self._batched(self.infos.get("final_info", {}), key)
            values = np.where(self.restarted, ended_values, values)
            present = np.where(self.restarted, ended_present, present)
        return values, present

    def _batched(self, infos: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
        count = len(self.rewards)
        if key not in infos:
            return np.zeros(count), np.zeros(count, dtype=bool)
        try:
            values = np.asarray(infos[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise _not_a_number(key, infos[key]) from None
        present = np.asarray(infos.get(f"_{key}", np.ones(len(values), dtype=bool)))
        if self.index is not None:
            values, present = values[self.index], present[self.index]
        return np.where(present, values, 0.0), present.astype(bool)


class EnvPool:
    """``num_envs`` single envs of our own, stepped in this process; paused slots are not stepped.

    Args:
        envs: the envs, one per slot, with equal observation and action spaces.
    """

    autoresets = False  # a finished env waits for the loop to reset it
    resets_alone = True  # any env can be reset on its own, with a seed of its own
    native = False  # envs of their own, not one native vector env
    same_step = False  # no autoreset, so none that resets before the next task is known

    def __init__(self, envs: Sequence[gym.Env]) -> None:
        if not envs or not all(isinstance(env, gym.Env) for env in envs):
            raise bad_argument("envs", "a non-empty list of gymnasium.Env", envs)
        self.envs = list(envs)
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        for i, env in enumerate(self.envs):
            if (env.observation_space != self.single_observation_space
                    or env.action_space != self.single_action_space):
                raise ValueError(f"envs[{i}]: expected the spaces of envs[0], got "
                                 f"{env.observation_space} and {env.action_space}")
        # [k, ...]: the latest observation of every slot
        self.observations = create_empty_array(self.single_observation_space, self.num_envs,
                                               fn=np.zeros)
        self._put = _row_writer(self.observations)

    def reset_slots(self, index: np.ndarray, seeds: list[int | None],
                    options: dict | None) -> None:
        for slot, seed in zip(index.tolist(), seeds):
            obs, _ = self.envs[slot].reset(seed=seed, options=options)
            self._put(slot, obs)

    def step_slots(self, index: np.ndarray, actions: np.ndarray) -> StepResult:
        envs, put, slots = self.envs, self._put, index.tolist()
        # Python scalars gathered in lists and converted once: setting numpy elements one by
        # one cost more than the loop's whole bookkeeping.
        steps = [envs[slot].step(action) for slot, action in zip(slots, actions)]
        observations, rewards, terminated, truncated, infos = zip(*steps)
        for slot, obs in zip(slots, observations):
            put(slot, obs)
        return _PoolStep(np.array(rewards, dtype=np.float64), np.array(terminated, dtype=bool),
                         np.array(truncated, dtype=bool), infos)

    def render_slots(self, index: Sequence[int]) -> list[Any]:
        """The current frame of each env in ``index`` (``env.render()``)."""
        return [self.envs[slot].render() for slot in index]

    @property
    def render_fps(self) -> float:
        return float(self.envs[0].metadata.get("render_fps") or 30)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class VectorSlots:
    """A Gymnasium vector env seen as slots: every sub-env is stepped, paused ones included.

    Finished sub-envs reset themselves (autoreset). Masked resets (``options["reset_mask"]``)
    are needed for tasks, per-episode seeds and ``max_steps`` cuts; vector envs that ignore the
    mask (such as Gymnasium's native ``CartPoleVectorEnv``) are caught, when the observations
    of sub-envs outside the mask change, instead of being miscounted.
    """

    autoresets = True

    def __init__(self, envs: VectorEnv) -> None:
        mode = envs.metadata.get("autoreset_mode")
        try:
            mode = AutoresetMode(mode)
        except ValueError:
            raise bad_argument("envs.metadata['autoreset_mode']", "AutoresetMode.NEXT_STEP or "
                               "SAME_STEP", mode) from None
        if mode is AutoresetMode.DISABLED:
            raise bad_argument("envs", "a vector env with NEXT_STEP or SAME_STEP autoreset",
                               f"autoreset_mode {mode}")
        _refuse_reward_wrappers(envs)
        self.envs = envs
        self._whole_resets_only = _whole_resets_only(envs)
        # Gymnasium's own vector envs reset the sub-envs of options["reset_mask"] alone, each
        # with a seed of its own; others (native ones such as CartPoleVectorEnv: one generator
        # for all sub-envs, one int seed), and those inside a vector wrapper that needs whole
        # resets, run on their autoresets: seeded once, at their first reset.
        self.native = not isinstance(envs.unwrapped, (SyncVectorEnv, AsyncVectorEnv))
        self.resets_alone = not self.native and self._whole_resets_only is None
        self.same_step = mode is AutoresetMode.SAME_STEP
        self.num_envs = envs.num_envs
        self.single_observation_space = envs.single_observation_space
        self.single_action_space = envs.single_action_space
        self.observations: Any = None
        self._actions: np.ndarray | None = None  # [k, ...]: last action of every sub-env
        self._autoresetting = np.zeros(self.num_envs, dtype=bool)  # [k] next step resets

    def reset_slots(self, index: np.ndarray, seeds: list[int | None],
                    options: dict | None) -> None:
        every_seed: list[int | None] = [None] * self.num_envs
        for slot, seed in zip(index, seeds):
            every_seed[slot] = seed
        if self.observations is None:
            # The first reset is of every sub-env at once (a masked reset needs them reset
            # once); a masked one below seeds again, so sub-envs start as if reset once with
            # their seed and options.
            self.observations, _ = self.envs.reset(seed=self._seed_argument(every_seed))
            if options is None and len(index) == self.num_envs:
                return
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[index] = True
        if self._whole_resets_only is not None and not mask.all():
            name = type(self._whole_resets_only).__name__
            raise ValueError(
                f"envs: expected a vector env that can reset some sub-envs alone (for tasks "
                f"and max_steps cuts), got one inside Gymnasium's vector {name}, which "
                f"{'refuses' if name == 'NormalizeObservation' else 'miscounts'} such resets; "
                f"put gymnasium.wrappers.{name} inside each sub-env (in make_env, as CleanRL "
                "does), or use no tasks and max_steps=None")
        before = self.observations
        # A fresh dict: the vector env pops "reset_mask" from it.
        self.observations, _ = self.envs.reset(seed=self._seed_argument(every_seed),
                                               options={**(options or {}), "reset_mask": mask})
        self._autoresetting[mask] = False
        if not _rows_equal(before, self.observations, np.flatnonzero(~mask)):
            raise ValueError(
                f"envs: expected a vector env that resets only the sub-envs in "
                f"options['reset_mask'], got a {type(self.envs.unwrapped).__name__} that reset "
                "others too; with it, use no tasks and max_steps=None (its own time limit), "
                "or build it with vectorization_mode='sync'"
            )

    def _seed_argument(self, seeds: list[int | None]) -> int | list[int | None] | None:
        """Seeds for ``VectorEnv.reset``: the list, or for a native vector env (one generator,
        int seeds only) the first slot's seed."""
        if all(seed is None for seed in seeds):
            return None
        return next(seed for seed in seeds if seed is not None) if self.native else seeds

    def step_slots(self, index: np.ndarray, actions: np.ndarray) -> StepResult:
        if self._actions is None:  # sub-envs that never act repeat a valid action
            self._actions = np.repeat(actions[:1], self.num_envs, axis=0)
        every = len(index) == self.num_envs  # then index is 0 .. k - 1: no gathering
        if every:
            self._actions = actions
        else:
            self._actions[index] = actions
        reset_step = self._autoresetting if every else self._autoresetting[index]
        self.observations, rewards, terminated, truncated, infos = self.envs.step(self._actions)
        ended = terminated | truncated
        if not self.same_step:
            self._autoresetting = ended
        if not every:
            rewards, terminated, truncated, ended = (
                rewards[index], terminated[index], truncated[index], ended[index])
        return _VectorStep(rewards, terminated, truncated, ended,
                           ended if self.same_step else None,
                           reset_step if np.count_nonzero(reset_step) else None, infos,
                           None if every else index)

    def render_slots(self, index: Sequence[int]) -> list[Any]:
        """The current frame of each sub-env in ``index`` (the vector env renders all)."""
        frames = self.envs.render()
        if frames is None:
            return [None] * len(index)
        return [frames[slot] for slot in index]

    @property
    def render_fps(self) -> float:
        return float(self.envs.metadata.get("render_fps") or 30)

    def close(self) -> None:
        self.envs.close()


def _refuse_reward_wrappers(envs: VectorEnv) -> None:
    layer = envs
    while isinstance(layer, gym.vector.VectorWrapper):
        if isinstance(layer, (gym.vector.VectorRewardWrapper,
                              gym.wrappers.vector.NormalizeReward)):
            raise ValueError(
                f"envs: expected a vector env whose rewards are the sub-envs' own, got a "
                f"{type(layer).__name__} wrapper: evaluation returns would be shaped; apply "
                "the reward wrappers you want counted inside each sub-env"
            )
        layer = layer.env


def _whole_resets_only(envs: VectorEnv) -> VectorEnv | None:
    """The first vector wrapper around ``envs`` that partial resets would break, if any.

    Gymnasium's vector ``NormalizeObservation`` refuses a ``reset_mask`` that is not all True;
    its vector ``RecordEpisodeStatistics`` looks for the mask after the vector env below it
    has popped it from the options, so it zeroes every sub-env's running return.
    """
    layer = envs
    while isinstance(layer, gym.vector.VectorWrapper):
        if isinstance(layer, (gym.wrappers.vector.NormalizeObservation,
                              gym.wrappers.vector.RecordEpisodeStatistics)):
            return layer
        layer = layer.env
    return None


def _rows_equal(before: Any, after: Any, rows: np.ndarray) -> bool:
    """Whether rows ``rows`` of two observation batches (arrays, dicts, tuples) are equal."""
    if isinstance(before, dict):
        return all(_rows_equal(before[key], after[key], rows) for key in before)
    if isinstance(before, tuple):
        return all(_rows_equal(b, a, rows) for b, a in zip(before, after))
    return np.array_equal(before[rows], after[rows], equal_nan=before.dtype.kind == "f")


def _unbatch_info(infos: dict, slot: int) -> dict:
    """Sub-env ``slot``'s entries of a vector info dict (keys ``k`` with masks ``_k``)."""
    info = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        if mask is not None and not mask[slot]:
            continue
        info[key] = _unbatch_info(value, slot) if isinstance(value, dict) else value[slot]
    return info


def _number(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _not_a_number(key, value) from None


def _not_a_number(key: str, value: Any) -> ValueError:
    return ValueError(f"info_keys: expected info[{key!r}] to be a number (or a batch of them), "
                      f"got {describe(value)}")


def _row_writer(batch: Any) -> Callable[[int, Any], None]:
    """``put(row, obs)``: writes one env's observation into a batch (arrays, dicts, tuples)."""
    if isinstance(batch, dict):
        writers = {key: _row_writer(sub) for key, sub in batch.items()}
        return lambda row, value: [put(row, value[key]) for key, put in writers.items()]
    if isinstance(batch, tuple):
        writers = [_row_writer(sub) for sub in batch]
        return lambda row, value: [put(row, item) for put, item in zip(writers, value)]
    return batch.__setitem__  # the hot path: one array


def as_slots(envs: EnvPool | VectorEnv) -> EnvPool | VectorSlots:
    if isinstance(envs, EnvPool):
        return envs
    if isinstance(envs, VectorEnv):
        return VectorSlots(envs)
    raise bad_argument("envs", "an EnvPool or a gymnasium VectorEnv", envs)
