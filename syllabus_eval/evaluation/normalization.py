"""Observation normalisation from the training run, frozen for evaluation (CleanRL PR #556).

Usage::

    envs = gym.vector.SyncVectorEnv([make_env] * 8)        # make_env adds NormalizeObservation
    ...                                                     # train; the statistics move
    runner.trigger_eval(agent, step=step, obs_norm=envs)    # read now, with the weights

    stats = read_obs_norm(envs)          # ObsNormStats(mean, var, count), a private copy
    apply_obs_norm(eval_envs, stats)     # into the eval envs' own wrappers, frozen

An agent trained behind ``gymnasium.wrappers.NormalizeObservation`` acts on normalised
observations, so it must be evaluated on the training run's statistics, frozen: evaluation
envs that keep their own running statistics (fresh, and moving while they evaluate) feed the
agent inputs it never saw. The statistics are read when an evaluation is triggered, together
with the weights, travel with them to process and Ray workers, and are written into the
evaluation envs' own ``NormalizeObservation`` wrappers (``obs_rms``) as a
:class:`FrozenRunningMeanStd`, whose update does nothing (and the wrapper's
``update_running_mean`` is switched off where it is in this process), so the training script's
own env factory evaluates right: its wrapper's ``epsilon`` and whatever it does around the
normalisation (clipping, say) stay as they are.

**Sources** (:func:`read_obs_norm`): a Gymnasium vector env whose sub-envs carry the wrapper
(CleanRL's ``ppo_continuous_action.py``; sync or async), a vector env wrapped in the vector
``NormalizeObservation``, a single env with the wrapper, anything else with an ``obs_rms``
holding ``mean``, ``var`` and ``count`` (SB3's ``VecNormalize`` too), a ``RunningMeanStd``
itself, a mapping with those keys, or an :class:`ObsNormStats`. **Several sub-envs' statistics
are merged by count**: each sub-env's wrapper has seen its own observations, and their union is
what training normalised with on average: the mean is the count-weighted mean, the variance
the pooled variance of all observations (Chan et al.'s parallel formula, as
``RunningMeanStd`` combines batches), the count their sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv
from gymnasium.wrappers.utils import RunningMeanStd, update_mean_var_count_from_moments

from syllabus_eval.errors import ArgumentError, bad_argument, describe

_HOW = ("a vector env whose sub-envs carry gymnasium.wrappers.NormalizeObservation, a vector "
        "env wrapped in gymnasium.wrappers.vector.NormalizeObservation, an env with the "
        "wrapper, an object with obs_rms, a RunningMeanStd, {'mean', 'var', 'count'} or "
        "ObsNormStats")


@dataclass(frozen=True)
class ObsNormStats:
    """Running observation statistics: what ``NormalizeObservation`` normalises with.

    Attributes:
        mean: per-feature mean, ``[*obs_shape]`` float64.
        var: per-feature variance, ``[*obs_shape]`` float64.
        count: observations behind them.
    """

    mean: np.ndarray
    var: np.ndarray
    count: float

    def __post_init__(self) -> None:
        try:
            mean = np.array(self.mean, dtype=np.float64)  # private copies: sources move on
            var = np.array(self.var, dtype=np.float64)
        except (TypeError, ValueError):
            raise bad_argument("obs_norm", "a numeric mean and var",
                               {"mean": self.mean, "var": self.var}) from None
        if mean.shape != var.shape:
            raise bad_argument("obs_norm", f"mean and var of one shape, mean {mean.shape}",
                               var)
        if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(var)) or np.any(var < 0):
            raise bad_argument("obs_norm", "a finite mean and a finite, non-negative var",
                               {"mean": mean, "var": var})
        try:
            count = float(self.count)
        except (TypeError, ValueError):
            count = float("nan")
        if not np.isfinite(count) or count <= 0:
            raise bad_argument("obs_norm.count", "a positive number of observations",
                               self.count)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)
        object.__setattr__(self, "count", count)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObsNormStats):
            return NotImplemented
        return (self.count == other.count and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.var, other.var))

    __hash__ = None  # mutable arrays inside

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and a number, for JSON and checkpoints."""
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}


def read_obs_norm(source: Any) -> ObsNormStats:
    """A private copy of the normalisation statistics ``source`` holds now (module docs).

    Raises:
        ValueError: ``source`` holds no observation normalisation.
    """
    if isinstance(source, ObsNormStats):
        return source
    if isinstance(source, Mapping):
        if not {"mean", "var", "count"} <= source.keys():
            raise bad_argument("obs_norm", _HOW, source)
        return ObsNormStats(source["mean"], source["var"], source["count"])
    if isinstance(source, VectorEnv):
        layer = _vector_layer(source)
        if layer is not None:
            return _from_rms(layer.obs_rms)
        if not _sub_envs_normalize(source):
            raise bad_argument("obs_norm", f"{_HOW}; this vector env's sub-envs have no "
                               "NormalizeObservation", source)
        return merge_obs_norm([_from_rms(rms) for rms in source.get_attr("obs_rms")])
    if all(not callable(getattr(source, name, callable)) for name in ("mean", "var", "count")):
        return _from_rms(source)  # a RunningMeanStd itself
    rms = getattr(source, "obs_rms", None)
    if rms is None and isinstance(source, gym.Env) and source.has_wrapper_attr("obs_rms"):
        rms = source.get_wrapper_attr("obs_rms")
    if rms is None:
        raise bad_argument("obs_norm", _HOW, source)
    return _from_rms(rms)


def merge_obs_norm(parts: list[ObsNormStats]) -> ObsNormStats:
    """The statistics of the union of what ``parts`` saw (merged by count, module docs)."""
    if not parts:
        raise bad_argument("obs_norm", "the statistics of at least one env", parts)
    mean, var, count = parts[0].mean, parts[0].var, parts[0].count
    for part in parts[1:]:
        if part.mean.shape != mean.shape:
            raise bad_argument("obs_norm", f"sub-env statistics of one shape {mean.shape}",
                               part.mean)
        mean, var, count = update_mean_var_count_from_moments(mean, var, count, part.mean,
                                                              part.var, part.count)
    return ObsNormStats(mean, var, count)


def apply_obs_norm(envs: Any, stats: ObsNormStats) -> int:
    """Write ``stats`` into the ``NormalizeObservation`` wrappers of ``envs``, frozen.

    Args:
        envs: an :class:`~syllabus_eval.EnvPool`, or a Gymnasium vector env (its sub-envs'
            wrappers, or its vector ``NormalizeObservation``).
        stats: the statistics to normalise with.

    Returns:
        The number of wrappers written.

    Raises:
        ValueError: no env of ``envs`` normalises observations, or one of another shape.
    """
    if isinstance(envs, VectorEnv):
        layer = _vector_layer(envs)
        if layer is not None:
            _write(layer, stats)
            return 1
        if not _sub_envs_normalize(envs):
            raise _no_wrapper(envs)
        current = envs.get_attr("obs_rms")
        for rms in current:
            _check_shape(rms, stats)
        # Through the vector env, so that it reaches sub-envs in other processes too. Only
        # obs_rms: set_attr writes the outermost wrapper with the name, and a NormalizeReward
        # outside NormalizeObservation (CleanRL's make_env) has an update_running_mean of its
        # own. A FrozenRunningMeanStd keeps still whatever the wrapper's flag says.
        envs.set_attr("obs_rms", [_to_rms(stats) for _ in current])
        return len(current)
    written = 0
    for env in getattr(envs, "envs", ()):
        if not env.has_wrapper_attr("obs_rms"):
            raise _no_wrapper(env)
        layer = env
        while not hasattr(layer, "obs_rms") or not hasattr(layer, "update_running_mean"):
            layer = layer.env
        _write(layer, stats)
        written += 1
    if not written:
        raise _no_wrapper(envs)
    return written


def normalizes_observations(envs: Any) -> bool:
    """Whether ``envs`` (a pool, a vector env or one env) has ``NormalizeObservation``
    wrappers."""
    if isinstance(envs, VectorEnv):
        return _vector_layer(envs) is not None or _sub_envs_normalize(envs)
    if isinstance(envs, gym.Env):
        return envs.has_wrapper_attr("obs_rms")
    return any(env.has_wrapper_attr("obs_rms") for env in getattr(envs, "envs", ()))


def _vector_layer(envs: VectorEnv) -> Any:
    """The vector ``NormalizeObservation`` around ``envs``, if any."""
    layer = envs
    while isinstance(layer, gym.vector.VectorWrapper):
        if hasattr(layer, "obs_rms") and hasattr(layer, "update_running_mean"):
            return layer
        layer = layer.env
    return None


def _sub_envs_normalize(envs: VectorEnv) -> bool:
    """Whether every sub-env has ``obs_rms``; asked without raising in the sub-envs, since an
    ``AsyncVectorEnv`` worker that raises shuts down."""
    try:
        return all(envs.call("has_wrapper_attr", "obs_rms"))
    except (AttributeError, NotImplementedError):  # a vector env without sub-envs (native)
        return False


def _from_rms(rms: Any) -> ObsNormStats:
    try:
        return ObsNormStats(rms.mean, rms.var, rms.count)
    except AttributeError:
        raise bad_argument("obs_norm", "obs_rms with mean, var and count", rms) from None


class FrozenRunningMeanStd(RunningMeanStd):
    """Statistics that ``NormalizeObservation`` normalises with but cannot move: ``update``
    does nothing, whatever the wrapper's ``update_running_mean`` says."""

    def update(self, x: Any) -> None:
        pass

    def update_from_moments(self, batch_mean: Any, batch_var: Any, batch_count: Any) -> None:
        pass


def _to_rms(stats: ObsNormStats) -> FrozenRunningMeanStd:
    rms = FrozenRunningMeanStd(shape=stats.mean.shape)
    rms.mean, rms.var, rms.count = stats.mean.copy(), stats.var.copy(), stats.count
    return rms


def _check_shape(rms: Any, stats: ObsNormStats) -> None:
    if np.shape(rms.mean) != stats.mean.shape:
        raise bad_argument("obs_norm", f"statistics of the evaluation envs' observation shape "
                           f"{np.shape(rms.mean)}", stats.mean)


def _write(layer: Any, stats: ObsNormStats) -> None:
    _check_shape(layer.obs_rms, stats)
    layer.obs_rms = _to_rms(stats)
    layer.update_running_mean = False  # frozen: evaluation must not move them


class MissingNormalization(ArgumentError):
    """``obs_norm`` was given, but the evaluation envs have no ``NormalizeObservation`` to take
    the statistics (the SB3 integration advises on it by this type)."""


def _no_wrapper(envs: Any) -> MissingNormalization:
    return MissingNormalization(
        "obs_norm",
        f"expected evaluation envs with gymnasium.wrappers.NormalizeObservation to take the "
        f"training statistics, got {describe(envs)} without it; build the evaluation envs "
        "with the training script's env factory (the one that adds the wrapper), or leave "
        "obs_norm out for an agent trained on raw observations")
