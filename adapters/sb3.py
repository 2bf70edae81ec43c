"""Stable-Baselines3 models: PPO and A2C (actor-critics), DQN, SAC and TD3 (DDPG too).

Usage::

    from stable_baselines3 import PPO
    from syllabus_eval.adapters import SB3Evaluator

    model = PPO("MlpPolicy", "CartPole-v1")
    evaluator = SB3Evaluator(model)             # a private copy of model.policy, kept in sync
    action, extras = evaluator.get_action(obs, deterministic=True)  # model.predict's action
    value, extras = evaluator.get_value(obs)    # [B, 1]: model.policy.predict_values
    model.learn(100_000)                        # meanwhile: queries from other threads

The policy (an ``nn.Module``) is the agent: SB3 steps it with ``torch.optim`` optimizers, so
the copy is refreshed tear-free after each step as for any module. Observations go through the
policy's own ``obs_to_tensor`` (channels-last images transposed as ``VecTransposeImage`` does,
``Dict`` spaces per key, dtypes kept: the policy's ``preprocess_obs`` scales and casts them in
its forward pass), on the device of the copy, which is the evaluator's.

Stable-Baselines3 is an optional dependency: ``pip install 'syllabus-eval[sb3]'``.
"""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval.errors import bad_argument, describe
from syllabus_eval.query.compiled import unwrap_compiled
from syllabus_eval.query.evaluator import AgentInputs, Clone, Evaluator, LSTMState
from syllabus_eval.query.inputs import TensorTree

_CPU = torch.device("cpu")
_SUPPORTED = ("PPO and A2C (ActorCriticPolicy), DQN (DQNPolicy), SAC (SACPolicy), TD3 and DDPG "
              "(TD3Policy), or their policies")


@functools.cache
def _sb3() -> SimpleNamespace:
    """The SB3 classes the adapter dispatches on, imported on first use (an optional extra)."""
    try:
        from stable_baselines3.common.base_class import BaseAlgorithm
        from stable_baselines3.common.distributions import (
            CategoricalDistribution,
            Distribution,
            SquashedDiagGaussianDistribution,
            StateDependentNoiseDistribution,
        )
        from stable_baselines3.common.policies import ActorCriticPolicy
        from stable_baselines3.dqn.policies import DQNPolicy
        from stable_baselines3.sac.policies import SACPolicy
        from stable_baselines3.td3.policies import TD3Policy
    except ImportError as error:
        raise ImportError("SB3Evaluator needs Stable-Baselines3: "
                          "pip install 'syllabus-eval[sb3]'") from error
    return SimpleNamespace(
        BaseAlgorithm=BaseAlgorithm,
        strategies=((ActorCriticPolicy, _ActorCritic), (DQNPolicy, _QLearning),
                    (SACPolicy, _SoftActorCritic), (TD3Policy, _TD3)),
        Distribution=Distribution, Categorical=CategoricalDistribution,
        SquashedGaussian=SquashedDiagGaussianDistribution, SDE=StateDependentNoiseDistribution)


class SB3Evaluator(Evaluator):
    """Queries a Stable-Baselines3 model's policy.

    Args:
        model: an SB3 model (``PPO``, ``A2C``, ``DQN``, ``SAC``, ``TD3``, ``DDPG``) or its
            ``policy``, compiled (``torch.compile``) or not: a compiled policy's wrapped module
            is then the one queried and synced. Recurrent policies (sb3-contrib's
            ``RecurrentPPO``) are not supported.
        device: where queries run (default: the policy's device).
        preprocess_obs: applied to raw observations before the policy's own preparation.
        copy_agent: query a private, synced copy of the policy (default) or the policy itself
            (``False``: from the training thread only; SB3's distribution objects keep the
            state of each call, which a query from another thread would overwrite in the
            middle of a training forward pass).
        **kwargs: the :class:`~syllabus_eval.Evaluator` options (``deterministic``,
            ``observation_space``, ``auto_sync``, ``sync_timeout``).

    Actions are what ``model.predict`` sends to the env, as a tensor ``[B, *action_shape]``:
    Box actions of squashing policies (SAC, TD3) are rescaled to the action space's bounds
    (``policy.unscale_action``), those of the others (PPO, A2C) clipped to them; ``extras``
    then holds ``policy_action``, the action before that, in the policy's own units. Greedy
    actions (``deterministic=True``) are the distribution's mode (PPO, A2C, SAC), the argmax of
    the Q values (DQN) or the actor's output (TD3); sampled ones are drawn from the
    distribution (PPO, A2C, SAC), epsilon-greedy with the model's current
    ``exploration_rate`` (DQN given as a model; a bare ``DQNPolicy`` is greedy, as its
    ``predict``), and TD3's equal its greedy ones (its ``predict`` adds no noise either).

    Values ``[B, 1]``: PPO, A2C: ``policy.predict_values`` (the value head); DQN: the largest
    Q value; SAC, TD3: the critic's Q value of the greedy action, the minimum over its Q
    networks, as SAC's and TD3's targets take it (clipped double Q; not SAC's soft value: no
    entropy term). Each equals the policy's own computation under ``torch.no_grad()`` bit for
    bit.

    ``extras``: ``log_prob`` (PPO, A2C, SAC: of ``policy_action``), ``entropy`` (PPO, A2C),
    ``policy_logits`` [B, A] (discrete PPO, A2C), ``q_values`` ([B, A] for DQN, [B, n_critics]
    from the value queries of SAC and TD3).

    The copy holds the whole policy, target networks included (never queried: SB3 writes them
    through ``.data``, which the weight sync neither sees nor brackets).
    """

    obs_dtype = None  # the policy's preprocess_obs casts and scales (images / 255) itself
    recurrent = False  # sb3-contrib's recurrent policies are not supported
    # The strategy keeps no state of its own (DQN's reads the model's exploration rate, live).
    clone_rules: ClassVar[dict[str, Clone]] = {"_strategy": Clone.SHARE,
                                               "_action_space": Clone.SHARE}

    def __init__(self, model: Any, device: str | torch.device | None = None,
                 preprocess_obs: Any = None, copy_agent: bool = True, **kwargs: Any) -> None:
        sb3 = _sb3()
        is_model = isinstance(model, sb3.BaseAlgorithm)
        policy = model.policy if is_model else model
        # A compiled policy (torch.compile) holds no weights of its own: the policy it wraps
        # trains, and is the one to copy and query.
        policy = unwrap_compiled(policy)
        strategy = next((strategy for cls, strategy in sb3.strategies
                         if isinstance(policy, cls)), None)
        if strategy is None or hasattr(policy, "lstm_actor"):  # sb3-contrib's recurrent ones
            wrapped = "" if policy is model or is_model else (
                f" wrapping {type(policy).__name__}")
            raise TypeError(f"model: SB3Evaluator supports {_SUPPORTED}; got "
                            f"{type(model).__name__}{wrapped}"
                            + (" (recurrent policies are not supported)" if strategy else ""))
        super().__init__(policy, device, preprocess_obs, copy_agent, **kwargs)
        # One strategy per kind of policy, chosen once: each hook asks it, never the kind.
        self._strategy: _Strategy = strategy(
            model if is_model and strategy.reads_model else None, policy.action_space)
        self._action_space = policy.action_space

    def _copy_memo(self, agent: nn.Module) -> dict[int, Any]:
        # SB3's distributions keep the tensors of their last call (graph-attached after a
        # training step, gSDE's noise matrices always), which deepcopy refuses: the copy gets
        # them detached, on its device. Its optimizers are left out (never stepped).
        sb3, memo = _sb3(), {}
        for module in agent.modules():
            for value in vars(module).values():
                if isinstance(value, torch.optim.Optimizer):
                    memo[id(value)] = None
                elif isinstance(value, sb3.Distribution) and id(value) not in memo:
                    memo[id(value)] = _detached_distribution(value, self.device)
        return memo

    # --- observations ------------------------------------------------------------------------

    def _prepare_state(self, state: Any) -> TensorTree:
        # obs_to_tensor takes numpy arrays: make them on the CPU, keeping their dtypes.
        batch = self._batched_observations(state, _CPU, None)
        space = self.agent.observation_space
        if isinstance(space, spaces.Dict) != isinstance(batch, dict) or (
                isinstance(batch, dict) and batch.keys() != space.spaces.keys()):
            expected = (f"a dict with keys {sorted(space.spaces)}" if isinstance(space, spaces.Dict)
                        else f"a batch of {space} observations, not a dict")
            raise bad_argument("state", expected, batch)
        try:
            # The policy's own preparation: channels-last images transposed (the policy's
            # space is channels-first when the model wrapped its env in VecTransposeImage),
            # shapes checked, then a move to the policy's device: the copy's, the evaluator's.
            obs, batched = self.agent.obs_to_tensor(_as_numpy(batch))
        except ValueError as error:  # SB3 names the shapes it takes
            raise ValueError(f"state: does not fit the policy's observation space {space}: "
                             f"{error}") from None
        if not batched:
            raise ValueError(f"state: expected a batch [B, ...] of {space} observations, got "
                             f"{describe(state)} (a single observation: add a batch dimension, "
                             "e.g. obs[None])")
        return obs

    # --- the hooks ---------------------------------------------------------------------------

    def _get_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        self._draw_noise(inputs)
        action, extras = self._strategy.action(self.agent, inputs)
        return self._env_action(action, extras), None, extras

    def _get_value(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        value, extras = self._strategy.value(self.agent, inputs)
        return value, None, extras

    def _get_action_and_value(self, inputs: AgentInputs
                              ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None, dict]:
        self._draw_noise(inputs)
        action, value, extras = self._strategy.action_and_value(self.agent, inputs)
        return self._env_action(action, extras), value, None, extras

    def _draw_noise(self, inputs: AgentInputs) -> None:
        """gSDE: a sampled query on the private copy draws its own exploration noise, from the
        synced ``log_std`` (``reset_noise(B)``: SB3 with ``sde_sample_freq=1``); in place, the
        training policy's current noise is used, as its ``predict`` does."""
        if inputs.deterministic or not self.copy_agent:
            return
        holder = self._strategy.noise_holder(self.agent)
        if holder is not None and isinstance(holder.action_dist, _sb3().SDE):
            self.agent.reset_noise(inputs.batch_size)

    def _env_action(self, action: torch.Tensor, extras: dict) -> torch.Tensor:
        """The action as ``policy.predict`` returns it: reshaped to the action space, Box
        actions unscaled (squashing policies) or clipped, with the policy's own numpy code."""
        space = self._action_space
        action = action.reshape((-1, *space.shape))
        if not isinstance(space, spaces.Box):
            return action
        extras["policy_action"] = action
        policy = self.agent
        array = action.cpu().numpy()
        array = (policy.unscale_action(array) if policy.squash_output
                 else np.clip(array, space.low, space.high))
        return torch.as_tensor(array, device=self.device)


# --- one strategy per kind of policy ------------------------------------------------------


class _Strategy:
    """How one kind of SB3 policy answers a query, given the policy queried (the copy).

    Args:
        model: the SB3 model, when one was given and the strategy ``reads_model``.
        action_space: the policy's action space.
    """

    reads_model = False  # whether it reads the model at each query (else it keeps none)

    def __init__(self, model: Any, action_space: spaces.Space) -> None:
        self.model, self.action_space = model, action_space

    def action(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def value(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def action_and_value(self, policy: Any, inputs: AgentInputs
                         ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        raise NotImplementedError

    def noise_holder(self, policy: Any) -> Any:
        """The module whose ``action_dist`` may draw gSDE noise; ``None``: no sampled noise."""
        return None


class _ActorCritic(_Strategy):
    """PPO and A2C (``ActorCriticPolicy``): the actor's distribution and the value head."""

    def action(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        # What policy._predict computes: the actor's distribution, its mode or a sample.
        distribution = policy.get_distribution(inputs.obs)
        action = distribution.get_actions(deterministic=inputs.deterministic)
        return action, _distribution_extras(distribution, distribution.log_prob(action))

    def value(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        return policy.predict_values(inputs.obs), {}  # [B, 1]

    def action_and_value(self, policy: Any, inputs: AgentInputs
                         ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        # policy.forward: one pass through the features extractor for both heads; it leaves
        # its distribution on policy.action_dist (SB3's distributions hold their state).
        action, value, log_prob = policy(inputs.obs, deterministic=inputs.deterministic)
        return action, value, _distribution_extras(policy.action_dist, log_prob)

    def noise_holder(self, policy: Any) -> Any:
        return policy


class _QLearning(_Strategy):
    """DQN (``DQNPolicy``): the Q network; greedy or epsilon-greedy actions, the largest Q."""

    reads_model = True  # its exploration rate, which DQN.learn moves

    def action(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        q_values = policy.q_net(inputs.obs)  # [B, A]
        return self._action(q_values, inputs), {"q_values": q_values}

    def value(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        q_values = policy.q_net(inputs.obs)  # [B, A]
        return q_values.max(dim=1, keepdim=True).values, {"q_values": q_values}

    def action_and_value(self, policy: Any, inputs: AgentInputs
                         ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        q_values = policy.q_net(inputs.obs)  # [B, A]
        return (self._action(q_values, inputs), q_values.max(dim=1, keepdim=True).values,
                {"q_values": q_values})

    def _action(self, q_values: torch.Tensor, inputs: AgentInputs) -> torch.Tensor:
        greedy = q_values.argmax(dim=1).reshape(-1)  # as QNetwork._predict
        # The exploration is the model's (epsilon-greedy in DQN.predict), read at each query.
        rate = 0.0 if self.model is None else float(self.model.exploration_rate)
        if inputs.deterministic or rate <= 0.0:
            return greedy
        # DQN.predict tosses one coin for the whole batch; one per env gives each env the same
        # chance of a random action, independently of the others.
        space, batch = self.action_space, inputs.batch_size
        explore = torch.rand(batch, device=q_values.device) < rate
        random = torch.randint(int(space.n), (batch,), device=q_values.device) + int(space.start)
        return torch.where(explore, random, greedy)


class _SoftActorCritic(_Strategy):
    """SAC (``SACPolicy``): a squashed Gaussian actor, valued by its clipped double Q."""

    def action(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        action, _, extras = _sac_action(policy, inputs.obs, inputs.deterministic, False)
        return action, extras

    def value(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        return _critic_value(policy, inputs.obs, policy(inputs.obs, deterministic=True))

    def action_and_value(self, policy: Any, inputs: AgentInputs
                         ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        # One actor pass gives both the answered action and the greedy one valued.
        action, greedy, extras = _sac_action(policy, inputs.obs, inputs.deterministic, True)
        value, value_extras = _critic_value(policy, inputs.obs, greedy)
        return action, value, {**extras, **value_extras}

    def noise_holder(self, policy: Any) -> Any:
        return policy.actor


class _TD3(_Strategy):
    """TD3 and DDPG (``TD3Policy``): the actor's deterministic output, its clipped double Q
    (its ``predict`` adds no noise, sampled or not)."""

    def action(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        return policy(inputs.obs), {}

    def value(self, policy: Any, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        return _critic_value(policy, inputs.obs, policy(inputs.obs, deterministic=True))

    def action_and_value(self, policy: Any, inputs: AgentInputs
                         ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        action = policy(inputs.obs)
        value, extras = _critic_value(policy, inputs.obs, action)
        return action, value, extras


def _distribution_extras(distribution: Any, log_prob: torch.Tensor) -> dict:
    extras = {"log_prob": log_prob, "entropy": distribution.entropy()}  # each [B]
    if isinstance(distribution, _sb3().Categorical):
        extras["policy_logits"] = distribution.distribution.logits  # [B, A], normalised
    return extras


def _sac_action(policy: Any, obs: TensorTree, deterministic: bool, greedy_too: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """SAC's action (squashed, in [-1, 1]) with its log-probability, and the greedy action too
    when asked: what ``Actor.forward`` computes, its distribution parameters once."""
    actor = policy.actor
    mean, log_std, kwargs = actor.get_action_dist_params(obs)
    distribution = actor.action_dist
    greedy = (distribution.actions_from_params(mean, log_std, deterministic=True, **kwargs)
              if greedy_too or deterministic else None)
    action = greedy if deterministic else distribution.actions_from_params(
        mean, log_std, deterministic=False, **kwargs)
    if isinstance(distribution, _sb3().SquashedGaussian):
        # Its pre-tanh sample is kept from the call above: no inverse tanh needed.
        log_prob = distribution.log_prob(action, distribution.gaussian_actions)
    else:  # gSDE
        log_prob = distribution.log_prob(action)
    return action, greedy, {"log_prob": log_prob}


def _critic_value(policy: Any, obs: TensorTree, action: torch.Tensor
                  ) -> tuple[torch.Tensor, dict]:
    """min over the critic's Q networks of Q(s, a), a in the actor's units ([-1, 1]), as the
    SAC and TD3 targets compute it (``th.cat(critic(obs, a), dim=1)``, then the min)."""
    q_values = torch.cat(policy.critic(obs, action), dim=1)  # [B, n_critics]
    return q_values.min(dim=1, keepdim=True).values, {"q_values": q_values}  # [B, 1]


def _detached_distribution(distribution: Any, device: torch.device) -> Any:
    """A copy of an SB3 distribution without its graph: tensors detached onto ``device``, the
    torch distributions of its last call dropped (each call builds its own anew)."""
    duplicate = copy.copy(distribution)
    for name, value in vars(distribution).items():
        if isinstance(value, torch.Tensor):
            setattr(duplicate, name, value.detach().to(device, copy=True))
        elif isinstance(value, torch.distributions.Distribution):
            setattr(duplicate, name, None)
    return duplicate


def _as_numpy(batch: TensorTree) -> np.ndarray | dict:
    if isinstance(batch, dict):
        return {key: _as_numpy(value) for key, value in batch.items()}
    return batch.detach().numpy()
