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

import threading
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from syllabus_eval.errors import Choice
from syllabus_eval.query.evaluator import AgentInputs, Clone, Evaluator, LSTMState


class HeadKind(Choice):
    """How greedy actions are read from the actor head."""

    MEAN = "mean"  # actor_mean: the continuous action itself
    LOGITS = "logits"  # actor on observations (ppo.py): the argmax of its logits
    TRUNK = "trunk"  # actor on a shared trunk's output (ppo_atari.py)


class CleanRLEvaluator(Evaluator):
    """Queries a CleanRL PPO ``Agent``.

    Feedforward agents need ``get_value(x)`` and ``get_action_and_value(x, action=None)``;
    recurrent ones (``is_lstm=True``) also ``get_states(x, lstm_state, done)`` and an ``lstm``.
    ``extras`` holds ``log_prob`` and ``entropy`` of sampled actions. Greedy actions
    (``deterministic=True``) use the actor head: ``actor_mean`` (continuous), ``actor`` on
    observations (``ppo.py``) or on ``get_states``' output (recurrent); with a shared
    ``network`` trunk (``ppo_atari.py``), ``actor`` on what ``network`` gives inside the
    agent's own ``get_value`` (which scales the input its way, e.g. ``x / 255``): one forward.
    The first greedy query checks that against every action scored by
    ``get_action_and_value``; an agent for which they differ keeps that scoring (one batched
    call of all actions).
    """

    clone_rules: ClassVar[dict[str, Clone]] = {
        "_head": Clone.FRESH,  # found in the agent copy it belongs to: a clone finds its own
        "_trunk_greedy": Clone.SHARE,  # the same code: what was checked holds for a clone
    }
    _head: tuple[nn.Module, HeadKind] | None = None  # the query agent's, found once

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
        self._head = None
        self._trunk_greedy: bool | None = None  # greedy from the trunk's output: checked once
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

    def _get_value_sequence(self, inputs: AgentInputs, policy: bool = False
                            ) -> tuple[torch.Tensor, LSTMState | None, dict]:
        """One pass over ``[T * B]`` rows. A feedforward agent has no state to carry. A
        recurrent one runs its LSTM once over every episode piece of every env (a packed
        sequence: PyTorch's loop over steps, not ours), each piece from its env's carried state
        or, after a reset, from zeros, as ``get_states`` restarts it; agents built otherwise
        get the default, step by step."""
        agent = self.agent
        if not self.is_lstm:
            if policy:
                _, _, entropy, value = agent.get_action_and_value(inputs.obs)
                return value, None, {"entropy": entropy}
            return agent.get_value(inputs.obs), None, {}
        critic = getattr(agent, "critic", None)
        # Reading the LSTM's inputs swaps the agent's lstm for a moment: only in a private
        # copy, never in the training agent that copy_agent=False queries in place.
        in_place = not self.copy_agent
        features = None if critic is None or in_place else _lstm_inputs(agent, inputs)
        if features is None:
            return super()._get_value_sequence(inputs, policy)
        hidden, next_state = _packed_lstm(agent.lstm, features, inputs)
        extras = {}
        if policy:
            head, _ = self._actor_head()
            logits = head(hidden)  # [T * B, A]: CleanRL's LSTM agents sample a Categorical
            extras = {"policy_logits": logits,
                      "entropy": torch.distributions.Categorical(logits=logits).entropy()}
        return critic(hidden), next_state, extras

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
        if kind is HeadKind.MEAN:
            return head(obs), None
        if self.is_lstm:
            hidden, next_state = agent.get_states(obs, inputs.lstm_state, inputs.done)
            return head(hidden).argmax(dim=-1), next_state
        if kind is HeadKind.LOGITS:
            return head(obs).argmax(dim=-1), None
        # A shared trunk scales its input inside the agent (x / 255): its output is read from
        # the agent's own get_value instead of guessing the scaling.
        if self._trunk_greedy is not False:
            hidden = _trunk_output(agent, obs)
            if hidden is not None:
                logits = head(hidden)  # [B, A]
                if self._trunk_greedy is None:  # the first query: the same as scoring?
                    self._trunk_greedy = bool(torch.allclose(
                        logits.log_softmax(-1), self._scored_actions(inputs), atol=1e-5))
                if self._trunk_greedy:
                    return logits.argmax(dim=-1), None
            self._trunk_greedy = False
        return self._scored_actions(inputs).argmax(dim=-1), None

    def _scored_actions(self, inputs: AgentInputs) -> torch.Tensor:
        """``[B, A]``: the log-probability of every action, from ``get_action_and_value``
        (one batched call of the A actions), which assumes nothing of the agent's insides."""
        obs, batch = inputs.obs, inputs.batch_size
        num_actions = _out_features(self._actor_head()[0])
        repeated = obs.repeat(num_actions, *([1] * (obs.dim() - 1)))  # [A * B, ...]
        actions = torch.arange(num_actions, device=obs.device).repeat_interleave(batch)
        _, log_prob, _, _ = self.agent.get_action_and_value(repeated, actions)
        return log_prob.view(num_actions, batch).T

    def _actor_head(self) -> tuple[nn.Module, HeadKind]:
        """The head greedy actions come from, and how to use it; found once per query agent,
        since walking the modules costs a step's time."""
        if self._head is None:
            self._head = self._find_actor_head(self.agent)
        return self._head

    def _find_actor_head(self, agent: nn.Module) -> tuple[nn.Module, HeadKind]:
        if isinstance(getattr(agent, "actor_mean", None), nn.Module) and not self.is_lstm:
            return agent.actor_mean, HeadKind.MEAN
        actor = getattr(agent, "actor", None)
        if isinstance(actor, nn.Module) and _out_features(actor):
            return actor, HeadKind.TRUNK if hasattr(agent, "network") else HeadKind.LOGITS
        raise TypeError(
            f"deterministic=True: {type(agent).__name__} exposes no actor head (`actor` ending "
            "in a Linear layer that gives logits, or `actor_mean` for continuous actions); "
            "subclass CleanRLEvaluator and override _greedy_action"
        )


def _out_features(head: nn.Module) -> int:
    """Output size of the head's last Linear layer (the number of discrete actions); 0: none."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def _trunk_output(agent: nn.Module, obs: torch.Tensor) -> torch.Tensor | None:
    """What ``agent.network`` gives inside the agent's own ``get_value(obs)`` (None when it is
    not called once with a tensor answer). Only this thread's call is read: with
    ``copy_agent=False`` training may run the same module meanwhile."""
    network = getattr(agent, "network", None)
    if not isinstance(network, nn.Module):
        return None
    me, seen = threading.get_ident(), []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() == me:
            seen.append(output)

    handle = network.register_forward_hook(record)
    try:
        agent.get_value(obs)
    finally:
        handle.remove()
    return seen[0] if len(seen) == 1 and isinstance(seen[0], torch.Tensor) else None


class _LSTMInputs(nn.Module):
    """Stands in for an agent's ``lstm`` for one ``get_states`` call, to record what the agent
    feeds it (its trunk's features, scaled as the agent scales them), and answers zeros."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.input_size, self.hidden_size = lstm.input_size, lstm.hidden_size
        self.num_layers = lstm.num_layers
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        self.inputs.append(x)
        return x.new_zeros(*x.shape[:-1], self.hidden_size), state


def _lstm_inputs(agent: nn.Module, inputs: AgentInputs) -> torch.Tensor | None:
    """The ``[T, B, F]`` features the agent's ``get_states`` feeds its LSTM, one step at a time
    as CleanRL's loop does; ``None`` when the agent is built otherwise."""
    lstm = getattr(agent, "lstm", None)
    if not isinstance(lstm, nn.LSTM) or lstm.batch_first or lstm.bidirectional:
        return None
    steps, batch = inputs.steps, inputs.batch_size
    recorder = _LSTMInputs(lstm)
    agent.lstm = recorder  # a private copy (never the live agent), under the query's lock
    try:
        agent.get_states(inputs.obs, tuple(torch.zeros_like(t) for t in inputs.lstm_state),
                         inputs.done)
    finally:
        agent.lstm = lstm
    shapes = {tuple(x.shape) for x in recorder.inputs}
    if len(recorder.inputs) != steps or shapes != {(1, batch, lstm.input_size)}:
        return None
    return torch.cat(recorder.inputs)  # [T, B, F]


def _packed_lstm(lstm: nn.LSTM, features: torch.Tensor, inputs: AgentInputs
                 ) -> tuple[torch.Tensor, LSTMState]:
    """The LSTM over each env's episode pieces in one packed call: outputs ``[T * B, H]`` and
    each env's state after its last step."""
    steps, batch = inputs.steps, inputs.batch_size
    done = inputs.done.view(steps, batch).cpu().numpy()  # [T, B]: indexing numpy is cheap
    lengths = [steps] * batch if inputs.lengths is None else inputs.lengths.tolist()
    h0, c0 = inputs.lstm_state  # [layers, B, H]
    pieces, starts_h, starts_c = [], [], []  # (env, first step, end step) and their states
    for b, length in enumerate(lengths):
        cuts = [0, *(np.flatnonzero(done[1:length, b]) + 1).tolist(), length]
        for first, end in zip(cuts, cuts[1:]):
            fresh = first > 0 or bool(done[0, b])  # an episode starts: CleanRL zeroes it
            pieces.append((b, first, end))
            starts_h.append(torch.zeros_like(h0[:, b]) if fresh else h0[:, b])
            starts_c.append(torch.zeros_like(c0[:, b]) if fresh else c0[:, b])
    packed = pack_sequence([features[first:end, b] for b, first, end in pieces],
                           enforce_sorted=False)
    output, (h_n, c_n) = lstm(packed, (torch.stack(starts_h, 1), torch.stack(starts_c, 1)))
    padded, _ = pad_packed_sequence(output)  # [longest piece, pieces, H]
    hidden = features.new_zeros(steps, batch, lstm.hidden_size)
    last = {}
    for p, (b, first, end) in enumerate(pieces):
        hidden[first:end, b] = padded[:end - first, p]
        last[b] = p
    order = [last[b] for b in range(batch)]
    return hidden.flatten(0, 1), (h_n[:, order], c_n[:, order])
