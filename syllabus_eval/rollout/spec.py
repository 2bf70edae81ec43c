"""How an evaluation's envs are made: :class:`EnvSpec` (factory, slots, vectorization, task
hook), one object checked once and passed as one, and :func:`make_envs`.

Usage::

    from syllabus_eval import EnvSpec, make_envs

    spec = EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=8)
    envs = spec.make()                                                 # an EnvPool of 8
    envs = make_envs(lambda: gym.make_vec("CartPole-v1", 8), 8)        # a VectorEnv, as it is

The runner builds one spec from its ``envs=`` argument and hands it to its backend, whose
workers build their share of the slots from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, VectorEnv

from syllabus_eval.errors import (
    ArgumentError,
    Choice,
    bad_argument,
    check_choice,
    check_count,
    describe,
)
from syllabus_eval.rollout.envs import EnvPool


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


class GivenEnvs:
    """An env (or vector env) instance given where a factory goes: :func:`make_envs` uses it
    as it is, and the evaluation leaves it open (it is the caller's)."""

    def __init__(self, envs: gym.Env | VectorEnv) -> None:
        self.envs = envs

    def __call__(self) -> gym.Env | VectorEnv:
        return self.envs


class _HookedFactory:
    """``make_env`` with the ``set_task`` hook around each env (picklable for subprocesses)."""

    def __init__(self, make_env: Callable[[], gym.Env],
                 set_task: Callable[[gym.Env, Any], None] | None) -> None:
        self.make_env = make_env
        self.set_task = set_task

    def __call__(self, env: gym.Env | None = None) -> gym.Env:
        env = self.make_env() if env is None else env
        return env if self.set_task is None else _TaskHook(env, self.set_task)


class VectorizationMode(Choice):
    """How :meth:`EnvSpec.make` puts single envs together."""

    SYNC = "sync"  # an EnvPool in this process, which does not step paused slots
    ASYNC = "async"  # a Gymnasium AsyncVectorEnv, one process per env


@dataclass(frozen=True)
class EnvSpec:
    """How an evaluation's envs are made: one object, checked once, passed as one (the runner
    hands it to its backend, whose workers build their share of the slots from it).

    Usage::

        spec = EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=8)
        EvalRunner(spec, evaluator)           # EvalRunner(make_env, ...) means EnvSpec(make_env)
        envs = spec.make()                    # an EnvPool of 8 (the caller closes it)
    """

    factory: Callable[[], gym.Env | VectorEnv] | gym.Env | VectorEnv
    """Returns one ``gymnasium.Env`` (``num_envs`` copies are made) or a whole ``VectorEnv`` of
    ``num_envs`` sub-envs; wrappers inside it are part of the env. Or an env instance, used as
    it is and left open (thread backends only, as TorchRL's ``Evaluator(eval_env, policy)``):
    a ``VectorEnv`` (its sub-envs are the slots) or one ``Env`` (one slot)."""
    num_envs: int | None = None
    """Env slots: slot ``i`` runs ``(num_episodes + i) // num_envs`` episodes, each on its own
    env. Default: 8, or the size of an env instance."""
    vectorization_mode: VectorizationMode = VectorizationMode.SYNC
    """``"sync"``: an :class:`EnvPool` in this process, which does not step paused slots;
    ``"async"``: a Gymnasium ``AsyncVectorEnv``, one process per env."""
    set_task: Callable[[gym.Env, Any], None] | None = None
    """Called as ``set_task(env, task)`` before each reset that starts an episode with a task,
    in the process that holds the env, instead of passing the task in the reset options."""

    def __post_init__(self) -> None:
        given = isinstance(self.factory, (gym.Env, VectorEnv))
        if not given and not callable(self.factory):
            raise bad_argument("factory", "a callable returning a gymnasium Env or VectorEnv, "
                               "or an env instance", self.factory)
        if self.num_envs is not None:
            check_count("num_envs", self.num_envs)
        if given:
            size = self.factory.num_envs if isinstance(self.factory, VectorEnv) else 1
            if self.num_envs is not None and self.num_envs != size:
                raise bad_argument("num_envs", f"{size}, the size of the env instance given "
                                   "(one Env is one slot: pass a factory for more)",
                                   self.num_envs)
        object.__setattr__(self, "num_envs", int(self.num_envs or (size if given else 8)))
        object.__setattr__(self, "vectorization_mode", check_choice(
            "vectorization_mode", self.vectorization_mode, VectorizationMode))
        if self.set_task is not None and not callable(self.set_task):
            raise bad_argument("set_task", "a callable set_task(env, task) or None",
                               self.set_task)

    @property
    def given(self) -> bool:
        """Whether ``factory`` is an env instance (the caller's: never closed here)."""
        return isinstance(self.factory, (gym.Env, VectorEnv))

    @property
    def make_env(self) -> Callable[[], gym.Env | VectorEnv]:
        """``factory`` as a callable (an instance: one that returns it)."""
        return GivenEnvs(self.factory) if self.given else self.factory

    def make(self) -> EnvPool | VectorEnv:
        """The envs of the ``num_envs`` slots, for :func:`run_episodes`; the caller closes
        them (not an instance given as ``factory``, which stays the caller's)."""
        num_envs, set_task = self.num_envs, self.set_task
        first = self.make_env()
        if isinstance(first, VectorEnv):
            if first.num_envs != num_envs:
                first.close()
                raise bad_argument("num_envs", f"{first.num_envs}, the size of the VectorEnv "
                                   "the factory returns", num_envs)
            if set_task is not None:
                first.close()
                raise ArgumentError("set_task", "expected None when the factory returns a "
                                    "VectorEnv (its sub-envs are out of reach); pass tasks "
                                    "in the reset options, or return a single env, got "
                                    f"{describe(set_task)}")
            return first
        if not isinstance(first, gym.Env):
            raise bad_argument("factory", "a callable returning a gymnasium Env or VectorEnv",
                               first)
        factory = _HookedFactory(self.make_env, set_task)
        if self.vectorization_mode is VectorizationMode.ASYNC:
            first.close()  # each subprocess builds its own
            return AsyncVectorEnv([factory] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
        envs = [factory(first)] + [factory() for _ in range(num_envs - 1)]
        if len({id(env.unwrapped) for env in envs}) < num_envs:
            for env in {id(env.unwrapped): env for env in envs}.values():
                env.close()
            # one env stepped as several slots would interleave their episodes
            raise ArgumentError("factory", (
                f"expected a factory that builds a new env on each call, got one that "
                f"returned the same {type(first.unwrapped).__name__} for several of the "
                f"{num_envs} slots (a lambda returning a captured env?); build the env inside "
                "the factory, or pass the env itself (thread backend, one slot)"))
        return EnvPool(envs)


def make_envs(make_env: Callable[[], gym.Env | VectorEnv], num_envs: int = 8,
              vectorization_mode: str = "sync",
              set_task: Callable[[gym.Env, Any], None] | None = None) -> EnvPool | VectorEnv:
    """The envs an evaluation runs on, from a factory: ``EnvSpec(...).make()``.

    Args:
        make_env: returns one ``gymnasium.Env`` (``num_envs`` copies are made), or a whole
            ``VectorEnv`` (used as it is; ``num_envs`` must match it).
        num_envs, vectorization_mode, set_task: see :class:`EnvSpec`.

    Returns:
        An :class:`EnvPool` or a vector env, for :func:`run_episodes`; the caller closes it.
    """
    if not callable(make_env):
        raise bad_argument("make_env", "a callable returning a gymnasium Env or VectorEnv",
                           make_env)
    try:
        return EnvSpec(make_env, num_envs, vectorization_mode, set_task).make()
    except ArgumentError as error:
        if error.argument != "factory":
            raise
        raise error.renamed("make_env") from None  # this function's name for it
