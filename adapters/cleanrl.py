"""CleanRL agents, feedforward (``ppo.py``, ``ppo_atari.py``, ``ppo_continuous_action.py``) and
recurrent (``ppo_atari_lstm.py``).

Usage::

    evaluator = CleanRLEvaluator(agent)                       # feedforward
    evaluator = CleanRLEvaluator(lstm_agent, is_lstm=True)   # recurrent
    state = evaluator.initial_lstm_state(num_envs)
    value, extras = evaluator.get_value(obs, lstm_state=state, done=done)
    state = extras["lstm_state"]

Observations become float32 tensors, as CleanRL's loop does with ``torch.Tensor(obs)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from syllabus_eval.evaluator import AgentInputs, Evaluator, LSTMState


class CleanRLEvaluator(Evaluator):
    """Queries a CleanRL PPO ``Agent``.

    Feedforward agents need ``get_value(x)`` and ``get_action_and_value(x, action=None)``;
    recurrent ones (``is_lstm=True``) also ``get_states(x, lstm_state, done)`` and an ``lstm``.
    ``extras`` holds ``log_prob`` and ``entropy`` of sampled actions. Greedy actions
    (``deterministic=True``) use the actor head: ``actor_mean`` (continuous), ``actor`` on
    observations (``ppo.py``) or on ``get_states``' output (recurrent); with a shared
    ``network`` trunk (``ppo_atari.py``), the action of highest log-probability, all actions
    scored in one batched ``get_action_and_value`` call.
    """

    def __init__(self, agent: nn.Module, device: str | torch.device | None = None,
                 preprocess_obs: Any = None, copy_agent: bool = True, is_lstm: bool = False,
                 **kwargs: Any) -> None:
        required = ["get_value", "get_action_and_value"] + (["get_states"] if is_lstm else [])
        missing = [name for name in required if not callable(getattr(agent, name, None))]
        if missing:
            raise TypeError(f"agent: a CleanRL agent{' (is_lstm=True)' if is_lstm else ''} "
                            f"needs {', '.join(required)}; {type(agent).__name__} lacks "
                            f"{', '.join(missing)}")
        super().__init__(agent, device, preprocess_obs, copy_agent, is_lstm=is_lstm, **kwargs)
        self._head: tuple[nn.Module, str] | None = None  # the query agent's, found once
        if self.deterministic:
            self._actor_head()  # fail at construction, not at the first query

    def initial_lstm_state(self, batch_size: int) -> LSTMState | None:
        if not self.is_lstm:
            return None
        lstm = self.agent.lstm
        shape = (lstm.num_layers, batch_size, lstm.hidden_size)
        return (torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device))

    def _get_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        if inputs.deterministic:
            action, next_state = self._greedy_action(inputs)
            return action, next_state, {}
        action, log_prob, entropy, _, next_state = self._sample(inputs)
        return action, next_state, {"log_prob": log_prob, "entropy": entropy}

    def _get_value(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        agent = self.agent
        if not self.is_lstm:
            return agent.get_value(inputs.obs), None, {}
        # CleanRL's recurrent get_value drops the next state: run get_states once and the
        # critic on its output (the same operations, so the same numbers).
        hidden, next_state = agent.get_states(inputs.obs, inputs.lstm_state, inputs.done)
        critic = getattr(agent, "critic", None)
        if critic is not None:
            return critic(hidden), next_state, {}
        return agent.get_value(inputs.obs, inputs.lstm_state, inputs.done), next_state, {}

    def _get_action_and_value(self, inputs: AgentInputs
                              ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None, dict]:
        if inputs.deterministic:
            return super()._get_action_and_value(inputs)
        action, log_prob, entropy, value, next_state = self._sample(inputs)
        return action, value, next_state, {"log_prob": log_prob, "entropy": entropy}

    def _sample(self, inputs: AgentInputs) -> tuple:
        if self.is_lstm:
            return self.agent.get_action_and_value(inputs.obs, inputs.lstm_state, inputs.done)
        return (*self.agent.get_action_and_value(inputs.obs), None)

    def _greedy_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None]:
        """The most likely action: override for agents built differently."""
        head, kind = self._actor_head()
        agent, obs = self.agent, inputs.obs
        if kind == "mean":
            return head(obs), None
        if self.is_lstm:
            hidden, next_state = agent.get_states(obs, inputs.lstm_state, inputs.done)
            return head(hidden).argmax(dim=-1), next_state
        if kind == "logits":
            return head(obs).argmax(dim=-1), None
        # A shared trunk scales its input inside get_action_and_value (e.g. x / 255): score
        # every action's log-probability in one batched call instead of guessing the scaling.
        num_actions, batch = _out_features(head), inputs.batch_size
        repeated = obs.repeat(num_actions, *([1] * (obs.dim() - 1)))  # [A * B, ...]
        actions = torch.arange(num_actions, device=obs.device).repeat_interleave(batch)
        _, log_prob, _, _ = agent.get_action_and_value(repeated, actions)
        return log_prob.view(num_actions, batch).argmax(dim=0), None

    def _actor_head(self) -> tuple[nn.Module, str]:
        """The head greedy actions come from, and how to use it; found once per query agent,
        since walking the modules costs a step's time."""
        if self._head is None:
            self._head = self._find_actor_head(self.agent)
        return self._head

    def _detach_into(self, clone: CleanRLEvaluator) -> None:
        clone._head = None  # the clone's head is in its own copy of the agent

    def _find_actor_head(self, agent: nn.Module) -> tuple[nn.Module, str]:
        if isinstance(getattr(agent, "actor_mean", None), nn.Module) and not self.is_lstm:
            return agent.actor_mean, "mean"
        actor = getattr(agent, "actor", None)
        if isinstance(actor, nn.Module) and _out_features(actor):
            return actor, "trunk" if hasattr(agent, "network") else "logits"
        raise TypeError(
            f"deterministic=True: {type(agent).__name__} exposes no actor head (`actor` ending "
            "in a Linear layer that gives logits, or `actor_mean` for continuous actions); "
            "subclass CleanRLEvaluator and override _greedy_action"
        )


def _out_features(head: nn.Module) -> int:
    """Output size of the head's last Linear layer (the number of discrete actions); 0: none."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0
