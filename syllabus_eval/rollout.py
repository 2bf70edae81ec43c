"""The episode loop: exact, unbiased evaluation episodes of any evaluator over vectorized envs.

Usage::

    from syllabus_eval import RolloutSettings, make_envs, run_episodes

    envs = make_envs(lambda: gym.make("CartPole-v1"), num_envs=8)      # our own pool
    settings = RolloutSettings(num_episodes=20, max_steps=500, seed=0)
    episodes = run_episodes(evaluator, envs, settings)                   # 20 EpisodeRecords
    envs.close()

Every backend of :class:`~syllabus_eval.EvalRunner` runs its episodes through
:func:`run_episodes`. The rules below make each episode a function of where it runs, never of
timing, so that episodes can be split across workers and merged.

**Env slots, quotas and pausing.** ``N`` episodes over ``k`` env slots give slot ``i`` the
fixed quota ``(N + i) // k`` (SB3 #402 / PR #447): never "the first N episodes to finish",
which over-counts short episodes. A slot that met its quota is paused: its results are no
longer counted and its recurrent state is sliced out of the batch (Habitat's ``pause_envs``).
An :class:`EnvPool` of our own no longer steps a paused env; a Gymnasium vector env steps all
its sub-envs, so a paused one gets its last action again and its results are dropped.

**Seeding.** With ``seed`` set, slot ``i`` (its *global* index, see below) is reset with
``seed + i`` at the start of its first episode and without a seed afterwards, so its env's own
random stream carries on from episode to episode, as a single env that is reset with a seed
once does. With deterministic actions (the default, see :class:`RolloutSettings`) slot ``i``'s
episodes depend only on ``(seed, i, its quota, its tasks)``. (A vector env with one generator
for all its sub-envs, such as Gymnasium's native ones, gets the single seed ``seed + i`` of its
first slot instead.)

**Tasks.** Episodes are numbered round by round: round ``j`` holds the ``j``-th episode of
every slot that has one, in slot order, and episode number ``e`` runs ``tasks[e % len(tasks)]``
(round robin over the quotas: each task gets ``N // T`` or ``N // T + 1`` of the ``N``
episodes). The task reaches the env at its reset, as ``options={"task": task}``, or through the
``set_task(env, task)`` hook of :func:`make_envs` for envs that take tasks another way.

**A subset of slots.** ``run_episodes(..., slots=[4, 5, 6, 7], num_slots=8)`` runs global slots
4 to 7 of an 8-slot evaluation on a 4-env pool: quotas, seeds and tasks follow the global
indices, so the records of workers that each run a share of the slots, put together, are the
records of one run over all of them (for stochastic actions see :class:`RolloutSettings`).

**Autoreset.** Gymnasium 1.x vector envs come in two modes (``envs.metadata["autoreset_mode"]``).
``NEXT_STEP`` (the default) resets a finished sub-env during the *next* step, which ignores
the action and gives reward 0: that step is counted in no episode, and the recurrent state
restarts after it, on the new episode's first observation. ``SAME_STEP`` resets a finished
sub-env inside the step that ends its episode: that step's reward is the episode's last, its
observation is the next episode's first, and its info is under ``info["final_info"]``; it is
counted once (Gymnasium PR #1624 under-counts it). Episodes that ``max_steps`` cuts, and with
tasks every episode, are reset by the loop through ``reset(options={"reset_mask": ...})``; a
vector env that ignores the mask (Gymnasium's native ``CartPoleVectorEnv`` does) is caught
rather than miscounted. ``DISABLED`` vector envs are refused.

**Rewards.** An episode's return is the sum of the rewards the envs return. Wrappers applied
inside the env factory are part of the env, so evaluate on raw rewards by leaving reward
shaping (``NormalizeReward``, ``ClipReward``, ...) out of the evaluation env factory. Vector
reward wrappers around a vector env you pass would silently change returns, so they are
refused; apply the wrappers you want counted to each sub-env instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, VectorEnv
from gymnasium.vector.utils import create_empty_array

from .errors import EvaluationCancelled, bad_argument, check_count, check_flag, describe

__all__ = ["EnvPool", "EpisodeRecord", "RolloutSettings", "check_fit", "episode_quota",
           "make_envs", "run_episodes"]


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """One finished evaluation episode.

    Attributes:
        env_index: the global index of the env slot that ran it.
        episode_index: ``j`` for the slot's ``j``-th episode (from 0).
        reward: the episode's return, the sum of the env's rewards.
        length: steps in the episode (reset steps are not steps).
        terminated: the env ended the episode (a terminal state).
        truncated: the episode was cut short, by the env or by ``max_steps``.
        task: the task it ran (``None`` without tasks).
        success: the ``success_key`` entry of the last step's info, ``None`` if absent.
    """

    env_index: int
    episode_index: int
    reward: float
    length: int
    terminated: bool
    truncated: bool
    task: Any = None
    success: bool | None = None


@dataclass(frozen=True)
class RolloutSettings:
    """What one evaluation runs; shared by every backend and worker.

    Args:
        num_episodes: ``N``, the episodes counted, spread over the slots by fixed quotas.
        max_steps: steps after which an episode is cut short (``truncated``); ``None``: no
            limit beyond the env's own.
        deterministic: greedy actions (``True``, the default, as SB3's ``evaluate_policy``),
            sampled actions (``False``), or the evaluator's own default (``None``). Episodes are
            reproducible and identical across backends with greedy actions; sampled actions
            are so only when the evaluator's sampler is seeded and batches are split the same
            way (PyTorch's global generator is shared with training, so it is not re-seeded).
        seed: slot ``i`` is first reset with ``seed + i``; ``None``: unseeded resets.
        tasks: tasks assigned to episodes round robin (see the module docs); ``None``: none.
        success_key: the info key read at the last step of an episode for its success.
    """

    num_episodes: int
    max_steps: int | None = 1000
    deterministic: bool | None = True
    seed: int | None = 0
    tasks: Sequence[Any] | None = None
    success_key: str = "success"

    def __post_init__(self) -> None:
        check_count("num_episodes", self.num_episodes)
        if self.max_steps is not None:
            check_count("max_steps", self.max_steps)
        check_flag("deterministic", self.deterministic, none_ok=True)
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, (int, np.integer))):
            raise bad_argument("seed", "an int or None", self.seed)
        if self.tasks is not None:
            if isinstance(self.tasks, (str, bytes)) or not isinstance(self.tasks, Sequence) \
                    or not self.tasks:
                raise bad_argument("tasks", "a non-empty list of tasks or None", self.tasks)
            names = [str(task) for task in self.tasks]
            if len(set(names)) != len(names):
                raise bad_argument("tasks", "tasks with distinct names (metrics are keyed by "
                                   "str(task))", names)
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if not isinstance(self.success_key, str):
            raise bad_argument("success_key", "an info key (str)", self.success_key)


def episode_quota(num_episodes: int, num_slots: int, slot: int) -> int:
    """Episodes counted on env slot ``slot`` of ``num_slots``: ``(N + i) // k``."""
    return (num_episodes + slot) // num_slots


def _episode_number(num_episodes: int, num_slots: int, slot: int, episode: int) -> int:
    """The round-by-round number of the ``episode``-th episode of ``slot`` (module docs).

    Quotas are ``q`` or ``q + 1`` (``q = N // k``) and the last ``N % k`` slots have ``q + 1``:
    rounds before ``q`` are full, round ``q`` holds only those last slots.
    """
    full_rounds, extra = divmod(num_episodes, num_slots)
    number = episode * num_slots + slot
    return number - (num_slots - extra) if episode == full_rounds else number


# --- env slots -------------------------------------------------------------------------------


class _Step(NamedTuple):
    """What stepping the active slots gave, one entry per active slot (``[A]``)."""

    rewards: np.ndarray  # [A] float64
    terminated: np.ndarray  # [A] bool
    truncated: np.ndarray  # [A] bool
    restarted: np.ndarray | None  # [A] bool: ended and already began the next (SAME_STEP)
    reset_step: np.ndarray | None  # [A] bool: an autoreset step (NEXT_STEP), nothing to count
    final_info: Callable[[int], dict]  # active position -> info of the episode's last step


class EnvPool:
    """``num_envs`` single envs of our own, stepped in this process; paused slots are not stepped.

    Args:
        envs: the envs, one per slot, with equal observation and action spaces.
    """

    autoresets = False  # a finished env waits for the loop to reset it

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

    def step_slots(self, index: np.ndarray, actions: np.ndarray) -> _Step:
        count = len(index)
        rewards = np.empty(count)
        terminated = np.empty(count, dtype=bool)
        truncated = np.empty(count, dtype=bool)
        infos = []
        envs, put = self.envs, self._put
        for position, slot in enumerate(index.tolist()):
            obs, rewards[position], terminated[position], truncated[position], info = \
                envs[slot].step(actions[position])
            put(slot, obs)
            infos.append(info)
        return _Step(rewards, terminated, truncated, None, None, infos.__getitem__)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _VectorSlots:
    """A Gymnasium vector env seen as slots: every sub-env is stepped, paused ones included.

    Finished sub-envs reset themselves (autoreset). Masked resets (``options["reset_mask"]``)
    are needed only for tasks and ``max_steps`` cuts; vector envs that ignore the mask (such as
    Gymnasium's native ``CartPoleVectorEnv``) are caught, when the observations of sub-envs
    outside the mask change, instead of being miscounted.
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
            self.observations, _ = self.envs.reset(seed=_seed_argument(every_seed))
            if options is None and len(index) == self.num_envs:
                return
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[index] = True
        before = self.observations
        # A fresh dict: the vector env pops "reset_mask" from it.
        self.observations, _ = self.envs.reset(seed=_seed_argument(every_seed),
                                               options={**(options or {}), "reset_mask": mask})
        self._autoresetting[mask] = False
        if not _rows_equal(before, self.observations, np.flatnonzero(~mask)):
            raise ValueError(
                f"envs: expected a vector env that resets only the sub-envs in "
                f"options['reset_mask'], got a {type(self.envs.unwrapped).__name__} that reset "
                "others too; with it, use no tasks and max_steps=None (its own time limit), "
                "or build it with vectorization_mode='sync'"
            )

    def step_slots(self, index: np.ndarray, actions: np.ndarray) -> _Step:
        if self._actions is None:  # sub-envs that never act repeat a valid action
            self._actions = np.repeat(actions[:1], self.num_envs, axis=0)
        every = len(index) == self.num_envs  # then index is 0 .. k - 1: no gathering
        if every:
            self._actions = actions
        else:
            self._actions[index] = actions
        reset_step = self._autoresetting if every else self._autoresetting[index]
        self.observations, rewards, terminated, truncated, infos = self.envs.step(self._actions)
        if not self.same_step:
            self._autoresetting = terminated | truncated
        if not every:
            rewards, terminated, truncated = rewards[index], terminated[index], truncated[index]
        restarted = (terminated | truncated) if self.same_step else None

        def final_info(position: int) -> dict:
            if restarted is not None and restarted[position]:  # SAME_STEP: moved aside
                return _unbatch_info(infos.get("final_info", {}), index[position])
            return _unbatch_info(infos, index[position])

        return _Step(rewards, terminated, truncated, restarted,
                     reset_step if reset_step.any() else None, final_info)

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


def _seed_argument(seeds: list[int | None]) -> int | list[int | None] | None:
    """Seeds for ``VectorEnv.reset``: an int ``s`` when they are ``s, s + 1, ...`` (which vector
    envs with a single generator, such as native ones, also take), else the list."""
    first = seeds[0]
    if first is None:
        return None if all(seed is None for seed in seeds) else seeds
    return first if seeds == list(range(first, first + len(seeds))) else seeds


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


def _row_writer(batch: Any) -> Callable[[int, Any], None]:
    """``put(row, obs)``: writes one env's observation into a batch (arrays, dicts, tuples)."""
    if isinstance(batch, dict):
        writers = {key: _row_writer(sub) for key, sub in batch.items()}
        return lambda row, value: [put(row, value[key]) for key, put in writers.items()]
    if isinstance(batch, tuple):
        writers = [_row_writer(sub) for sub in batch]
        return lambda row, value: [put(row, item) for put, item in zip(writers, value)]
    return batch.__setitem__  # the hot path: one array


def _take(batch: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` of a batch (arrays, dicts, tuples)."""
    if isinstance(batch, dict):
        return {key: _take(sub, rows) for key, sub in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_take(sub, rows) for sub in batch)
    return batch[rows]


class _TaskHook(gym.Wrapper):
    """Hands the ``task`` reset option to ``set_task(env, task)`` before the env's reset."""

    def __init__(self, env: gym.Env, set_task: Callable[[gym.Env, Any], None]) -> None:
        super().__init__(env)
        self._set_task = set_task

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        if options and "task" in options:
            options = dict(options)
            self._set_task(self.env, options.pop("task"))
        return self.env.reset(seed=seed, options=options or None)


class _HookedFactory:
    """``make_env`` with the ``set_task`` hook around each env (picklable for subprocesses)."""

    def __init__(self, make_env: Callable[[], gym.Env],
                 set_task: Callable[[gym.Env, Any], None] | None) -> None:
        self.make_env = make_env
        self.set_task = set_task

    def __call__(self, env: gym.Env | None = None) -> gym.Env:
        env = self.make_env() if env is None else env
        return env if self.set_task is None else _TaskHook(env, self.set_task)


def make_envs(make_env: Callable[[], gym.Env | VectorEnv], num_envs: int = 8,
              vectorization_mode: str = "sync",
              set_task: Callable[[gym.Env, Any], None] | None = None) -> EnvPool | VectorEnv:
    """The envs an evaluation runs on, from a factory.

    Args:
        make_env: returns one ``gymnasium.Env`` (``num_envs`` copies are made), or a whole
            ``VectorEnv`` (used as it is; ``num_envs`` must match it).
        num_envs: env slots.
        vectorization_mode: ``"sync"``: an :class:`EnvPool` in this process, which does not
            step paused slots; ``"async"``: a Gymnasium ``AsyncVectorEnv``, one process per env.
        set_task: called as ``set_task(env, task)`` before each reset that starts an episode
            with a task, in the process that holds the env, instead of passing the task in
            the reset options.

    Returns:
        An :class:`EnvPool` or a vector env, for :func:`run_episodes`; the caller closes it.
    """
    if not callable(make_env):
        raise bad_argument("make_env", "a callable returning a gymnasium Env or VectorEnv",
                           make_env)
    check_count("num_envs", num_envs)
    if vectorization_mode not in ("sync", "async"):
        raise bad_argument("vectorization_mode", "'sync' or 'async'", vectorization_mode)
    if set_task is not None and not callable(set_task):
        raise bad_argument("set_task", "a callable set_task(env, task) or None", set_task)
    first = make_env()
    if isinstance(first, VectorEnv):
        if first.num_envs != num_envs:
            first.close()
            raise bad_argument("num_envs", f"{first.num_envs}, the size of the VectorEnv "
                               "make_env returns", num_envs)
        if set_task is not None:
            first.close()
            raise ValueError("set_task: expected None when make_env returns a VectorEnv (its "
                             "sub-envs are out of reach); pass tasks in the reset options, or "
                             "let make_env return a single env")
        return first
    if not isinstance(first, gym.Env):
        raise bad_argument("make_env", "a callable returning a gymnasium Env or VectorEnv",
                           first)
    factory = _HookedFactory(make_env, set_task)
    if vectorization_mode == "async":
        first.close()  # each subprocess builds its own
        return AsyncVectorEnv([factory] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
    return EnvPool([factory(first)] + [factory() for _ in range(num_envs - 1)])


def _as_slots(envs: EnvPool | VectorEnv) -> EnvPool | _VectorSlots:
    if isinstance(envs, EnvPool):
        return envs
    if isinstance(envs, VectorEnv):
        return _VectorSlots(envs)
    raise bad_argument("envs", "an EnvPool or a gymnasium VectorEnv", envs)


# --- the agent side --------------------------------------------------------------------------


def check_fit(evaluator: Any, envs: EnvPool | VectorEnv,
              deterministic: bool | None = True) -> None:
    """Raise a clear ``ValueError`` when the envs' spaces do not fit the evaluator.

    Asks the evaluator for the action of one all-zero observation of the env's single
    observation space and checks the action's shape against the single action space.
    """
    obs_space = envs.single_observation_space
    action_space = envs.single_action_space
    probe = create_empty_array(obs_space, 1, fn=np.zeros)  # [1, ...]
    lstm_state, done = _initial_state(evaluator, 1)
    try:
        action, _ = evaluator.get_action(probe, lstm_state, done, deterministic=deterministic)
    except Exception as error:
        raise ValueError(
            f"envs: the env's single_observation_space {obs_space} does not fit "
            f"{type(evaluator).__name__}: a query on one observation of it raised {error!r}"
        ) from error
    action = _to_numpy(action)
    expected = (1, *(action_space.shape or ()))
    if action.shape != expected or (isinstance(action_space, spaces.Discrete)
                                    and not action_space.contains(action[0])):
        raise ValueError(
            f"envs: the env's single_action_space {action_space} does not fit "
            f"{type(evaluator).__name__}: for one observation it gave an action "
            f"{describe(action)} (expected shape {expected})"
        )


def _initial_state(evaluator: Any, batch_size: int) -> tuple[Any, np.ndarray | None]:
    """The recurrent state and done flags ([B] float32, all 1: episodes start) of B envs."""
    if not getattr(evaluator, "is_lstm", False):
        return None, None
    return evaluator.initial_lstm_state(batch_size), np.ones(batch_size, dtype=np.float32)


def _to_numpy(action: Any) -> np.ndarray:
    if isinstance(action, torch.Tensor):
        if action.device.type == "cpu" and not action.requires_grad:
            return action.numpy()  # the hot path: no copy
        return action.detach().cpu().numpy()
    return np.asarray(action)


def _restart_rows(evaluator: Any, lstm_state: tuple, rows: np.ndarray) -> tuple:
    """``lstm_state`` with rows ``rows`` (active positions) back at the initial state."""
    dim = getattr(evaluator, "lstm_batch_dim", 1)
    fresh = evaluator.initial_lstm_state(len(rows))
    restarted = []
    for tensor, initial in zip(lstm_state, fresh):
        index = torch.as_tensor(rows, device=tensor.device)
        restarted.append(tensor.index_copy(dim, index, initial.to(tensor)))
    return tuple(restarted)


def _keep_rows(evaluator: Any, lstm_state: tuple, rows: np.ndarray) -> tuple:
    """``lstm_state`` of the active positions ``rows`` only: paused envs are sliced out."""
    dim = getattr(evaluator, "lstm_batch_dim", 1)
    return tuple(t.index_select(dim, torch.as_tensor(rows, device=t.device))
                 for t in lstm_state)


# --- the loop --------------------------------------------------------------------------------


def run_episodes(
    evaluator: Any,
    envs: EnvPool | VectorEnv,
    settings: RolloutSettings,
    *,
    slots: Sequence[int] | None = None,
    num_slots: int | None = None,
    stop: threading.Event | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    yield_gil: bool = False,
) -> list[EpisodeRecord]:
    """Run the counted episodes of ``envs``' slots and return their records.

    Args:
        evaluator: anything with ``get_action(state, lstm_state, done, *, deterministic)``
            returning ``(action, extras)``; recurrent ones (``is_lstm``) also
            ``initial_lstm_state(batch_size)`` and ``extras["lstm_state"]``.
        envs: an :class:`EnvPool` or a Gymnasium vector env (``NEXT_STEP`` or ``SAME_STEP``
            autoreset); it is reset here and stays open.
        settings: episodes, step limit, determinism, seed, tasks, success key.
        slots: the global slot index of each env of ``envs`` (default ``0 .. k - 1``).
        num_slots: the evaluation's total number of slots (default: ``len(slots)``).
        stop: when set, the loop stops before its next step and raises
            :class:`~syllabus_eval.EvaluationCancelled`.
        on_episode: called with each record as its episode ends (progress bars).
        yield_gil: sleep for a moment (``time.sleep(0)``) each step, for loops that run in a
            background thread beside training. Without it, each time the training thread
            releases the GIL for a torch call it may wait up to ``sys.getswitchinterval()``
            (5 ms) to get it back from this loop, which slowed the benchmark's PPO loop about
            4x; the pause lets it take the GIL back at once, for a slower evaluation.

    Returns:
        The records of every counted episode, ordered by ``(env_index, episode_index)``.
    """
    pool = _as_slots(envs)
    k = pool.num_envs
    global_slots = np.arange(k) if slots is None else np.asarray(slots, dtype=np.int64)
    if global_slots.shape != (k,) or len(set(global_slots.tolist())) != k:
        raise bad_argument("slots", f"{k} distinct global slot indices, one per env", slots)
    num_slots = k if num_slots is None else num_slots
    check_count("num_slots", num_slots)
    if global_slots.min() < 0 or global_slots.max() >= num_slots:
        raise bad_argument("slots", f"indices in [0, {num_slots})", slots)
    tasks = settings.tasks
    if tasks is not None and isinstance(pool, _VectorSlots) and pool.same_step:
        raise ValueError("tasks: a SAME_STEP vector env resets finished sub-envs before the "
                         "next task is known; use NEXT_STEP autoreset or an env factory")
    n = settings.num_episodes
    slot_ids = global_slots.tolist()  # [k] global index of each local slot
    quotas = [episode_quota(n, num_slots, i) for i in slot_ids]  # [k]
    episode = [0] * k  # [k] the running episode of each slot
    # Reset by hand what does not restart by itself: our pool's envs, and every episode that
    # needs its task passed at reset (and, below, episodes that max_steps cuts).
    reset_by_hand = not pool.autoresets or tasks is not None

    def task_of(slot: int) -> int | None:  # an index into tasks, for the slot's episode
        if tasks is None:
            return None
        return _episode_number(n, num_slots, slot_ids[slot], episode[slot]) % len(tasks)

    def reset(index: np.ndarray, first: bool = False) -> None:
        # One reset call per task: a vector env passes one options dict to all it resets.
        task_ids = [task_of(slot) for slot in index]
        for task_id in dict.fromkeys(task_ids):
            group = index[[t == task_id for t in task_ids]]
            seeds = [settings.seed + slot_ids[slot] if first and settings.seed is not None
                     else None for slot in group]
            pool.reset_slots(group, seeds, None if task_id is None
                             else {"task": tasks[task_id]})

    # Sub-envs of a vector env are all stepped, so all need a first reset; a pool's idle ones
    # are never touched.
    active = np.flatnonzero(quotas)  # [A] slots still counting episodes
    reset(active if isinstance(pool, EnvPool) else np.arange(k), first=True)
    # Per active slot, sliced like the recurrent state when slots pause.
    returns = np.zeros(active.size)  # [A] float64
    lengths = np.zeros(active.size, dtype=np.int64)  # [A]
    lstm_state, done = _initial_state(evaluator, active.size)
    max_steps = settings.max_steps or np.iinfo(np.int64).max
    records: list[EpisodeRecord] = []

    while active.size:
        if stop is not None and stop.is_set():
            raise EvaluationCancelled("the evaluation was stopped before its episodes ended")
        if yield_gil:
            time.sleep(0)
        obs = pool.observations if active.size == k else _take(pool.observations, active)
        action, extras = evaluator.get_action(obs, lstm_state, done,
                                              deterministic=settings.deterministic)
        actions = _to_numpy(action)  # [A, ...]
        if len(actions) != active.size:
            raise ValueError(f"evaluator: expected {active.size} actions, one per active env, "
                             f"got {describe(actions)}")
        lstm_state = extras.get("lstm_state") if lstm_state is not None else None
        step = pool.step_slots(active, actions)
        fresh = step.reset_step  # [A] observations that begin an episode, or None
        if fresh is None:
            returns += step.rewards
            lengths += 1
            ended = step.terminated | step.truncated  # [A]
        else:  # an autoreset step is no step of any episode
            counted = ~fresh
            returns += step.rewards * counted
            lengths += counted
            ended = counted & (step.terminated | step.truncated)
        cut = lengths >= max_steps  # [A]
        if cut.any():
            cut &= ~ended  # the env's own ending comes first
            ended = ended | cut  # [A]: the done boundary

        if ended.any():
            restarted, by_hand, paused = [], [], []  # active positions
            for p in np.flatnonzero(ended).tolist():
                slot = active[p]
                task_id = task_of(slot)
                success = step.final_info(p).get(settings.success_key)
                record = EpisodeRecord(
                    env_index=slot_ids[slot], episode_index=episode[slot],
                    reward=float(returns[p]), length=int(lengths[p]),
                    terminated=bool(step.terminated[p]),
                    truncated=bool(step.truncated[p] or cut[p]),
                    task=None if task_id is None else tasks[task_id],
                    success=None if success is None else bool(success))
                records.append(record)
                if on_episode is not None:
                    on_episode(record)
                episode[slot] += 1
                returns[p], lengths[p] = 0.0, 0
                if episode[slot] == quotas[slot]:
                    paused.append(p)
                elif step.restarted is not None and step.restarted[p]:
                    restarted.append(p)
                elif reset_by_hand or cut[p]:
                    by_hand.append(p)
                # else a NEXT_STEP autoreset comes with the next step, which marks it fresh
            if by_hand:
                reset(active[by_hand])
            if done is not None and (restarted or by_hand):
                fresh = np.zeros(active.size, dtype=bool) if fresh is None else fresh.copy()
                fresh[restarted + by_hand] = True
            if paused:
                keep = np.ones(active.size, dtype=bool)  # [A]
                keep[paused] = False
                active, returns, lengths = active[keep], returns[keep], lengths[keep]
                if done is not None:
                    fresh = None if fresh is None else fresh[keep]
                    lstm_state = _keep_rows(evaluator, lstm_state, np.flatnonzero(keep))

        if done is not None:  # a recurrent agent: new episodes start from the initial state
            done = (np.zeros(active.size, dtype=np.float32) if fresh is None
                    else fresh.astype(np.float32))
            if fresh is not None and fresh.any():
                lstm_state = _restart_rows(evaluator, lstm_state, np.flatnonzero(fresh))

    return sorted(records, key=lambda r: (r.env_index, r.episode_index))
