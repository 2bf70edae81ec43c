"""moolib agents (the ``Net`` of moolib's ``examples/atari/models.py`` and models like it).

Usage::

    evaluator = MoolibEvaluator(model)
    core_state = evaluator.initial_lstm_state(num_envs)        # () without an LSTM core
    value, extras = evaluator.get_value(frames, lstm_state=core_state, done=done)

``model.forward(inputs, core_state)`` takes ``[T, B, ...]`` inputs: ``state`` (frames, dtype
kept), ``reward`` (float32), ``done`` (bool) and ``prev_action`` (int64); queries use T = 1.
Pass either plain observations (``reward`` and ``prev_action`` are then 0: the first step of an
episode) or a full input dict with a ``state`` key and any of ``reward`` and ``prev_action``.
The episode loop of :class:`~syllabus_eval.EvalRunner` hands each env's previous action and
reward over (:meth:`MoolibEvaluator.with_previous_step`), as the model sees them in training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from syllabus_eval.errors import bad_argument
from syllabus_eval.query.evaluator import AgentInputs, Evaluator, LSTMState
from syllabus_eval.query.inputs import (
    TensorTree,
    as_batch,
    batch_size_of,
    check_against_space,
    check_done_flags,
)

_INPUT_KEYS = {"state", "reward", "done", "prev_action"}


class MoolibEvaluator(Evaluator):
    """Queries a moolib model; ``core_state`` is carried as the recurrent state.

    ``extras`` holds ``policy_logits`` [B, A]. Sampled actions are the model's own ``action``
    output; greedy actions (``deterministic=True``) are the argmax of ``policy_logits``.
    """

    obs_dtype = None  # frames stay uint8: the model scales them itself

    def __init__(self, model: nn.Module, device: str | torch.device | None = None,
                 preprocess_obs: Any = None, copy_agent: bool = True, **kwargs: Any) -> None:
        if not callable(getattr(model, "initial_state", None)):
            raise TypeError(f"model: a moolib model needs initial_state(batch_size); "
                            f"{type(model).__name__} has none")
        is_lstm = len(model.initial_state(1)) > 0
        super().__init__(model, device, preprocess_obs, copy_agent, is_lstm=is_lstm, **kwargs)

    def with_previous_step(self, obs: Any, prev_action: Any, prev_reward: Any) -> dict:
        """The input dict of ``obs`` with each env's previous action and reward (what the
        episode loop passes; :class:`~syllabus_eval.PreviousStepQueries`)."""
        return {"state": obs, "prev_action": prev_action, "reward": prev_reward}

    def initial_lstm_state(self, batch_size: int) -> LSTMState:
        return tuple(t.to(self.device) for t in self.agent.initial_state(batch_size))

    def _prepare_state(self, state: Any) -> TensorTree:
        if self.preprocess_obs is not None:
            state = self.preprocess_obs(state)
        if isinstance(state, dict) and "state" in state:
            unknown = set(state) - _INPUT_KEYS
            if unknown:
                raise bad_argument("state", f"a moolib input dict with keys among "
                                   f"{sorted(_INPUT_KEYS)}", state)
            frames = as_batch(state["state"], self.device, None, "state['state']")
        else:
            state, frames = {}, as_batch(state, self.device, None, "state")
        batch = batch_size_of(frames, "state")
        reward = state.get("reward")
        prev_action = state.get("prev_action")
        prepared = {
            "state": frames,
            "reward": torch.zeros(batch, device=self.device) if reward is None
            else as_batch(reward, self.device, torch.float32, "state['reward']"),
            "prev_action": torch.zeros(batch, dtype=torch.int64, device=self.device)
            if prev_action is None
            else as_batch(prev_action, self.device, torch.int64, "state['prev_action']"),
        }
        if "done" in state:
            # 0/1 only, as the argument done (sequences: all T * B flags, time-major).
            name = "state['done']" if self._steps == 1 else "states['done']"
            prepared["done"] = as_batch(check_done_flags(state["done"], name), self.device,
                                        torch.float32, name)
        for key in ("reward", "prev_action", "done"):
            if key in prepared and tuple(prepared[key].shape) != (batch,):
                raise bad_argument(f"state[{key!r}]", f"one value per env, shape [{batch}]",
                                   prepared[key])
        if self.observation_space is not None:
            check_against_space(frames, self.observation_space, "state")
        return prepared

    def _prepare_lstm(self, lstm_state: Any, done: Any, batch_size: int
                      ) -> tuple[LSTMState, torch.Tensor | None]:
        if self.is_lstm:
            state = self._prepare_recurrent_state(lstm_state, batch_size)
        elif lstm_state in (None, ()):
            state = ()
        else:
            raise bad_argument("lstm_state", "None or () for a model without a core",
                               lstm_state)
        # None stays None: done may come in the input dict instead (see _forward).
        return state, None if done is None else self._prepare_done(done, batch_size)

    def _forward(self, inputs: AgentInputs) -> tuple[dict, LSTMState]:
        obs = inputs.obs
        done = obs.get("done")
        if done is None:
            done = (torch.zeros(inputs.steps * inputs.batch_size, device=self.device)
                    if inputs.done is None else inputs.done)
        elif inputs.done is not None:
            raise ValueError("done: given twice, as the argument done and as state['done']; "
                             "pass one of them")
        steps = inputs.steps  # [T * B] rows, time-major: [T, B] for the model
        model_inputs = {
            "state": obs["state"].reshape(steps, -1, *obs["state"].shape[1:]),
            "reward": obs["reward"].reshape(steps, -1),
            "prev_action": obs["prev_action"].reshape(steps, -1),
            "done": done.bool().reshape(steps, -1),
        }
        output, core_state = self.agent(model_inputs, inputs.lstm_state)
        return output, tuple(core_state)

    def _action_from(self, output: dict, inputs: AgentInputs) -> tuple[torch.Tensor, dict]:
        logits = output["policy_logits"][0]  # [B, A]
        action = logits.argmax(dim=-1) if inputs.deterministic else output["action"][0]
        return action, {"policy_logits": logits}

    def _get_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState, dict]:
        output, core_state = self._forward(inputs)
        action, extras = self._action_from(output, inputs)
        return action, core_state, extras

    def _get_value(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState, dict]:
        output, core_state = self._forward(inputs)
        return output["baseline"][0].unsqueeze(-1), core_state, {}  # [B, 1]

    def _get_value_sequence(self, inputs: AgentInputs, policy: bool = False
                            ) -> tuple[torch.Tensor, LSTMState, dict]:
        # The model takes [T, B] inputs: the whole sequence in one forward pass, where every
        # env runs all T steps (else its state would run on past its end: step by step then).
        if inputs.lengths is not None and bool((inputs.lengths != inputs.steps).any()):
            return super()._get_value_sequence(inputs, policy)
        output, core_state = self._forward(inputs)
        extras = {"policy_logits": output["policy_logits"].flatten(0, 1)} if policy else {}
        return output["baseline"].reshape(-1, 1), core_state, extras  # [T * B, 1]

    def _get_action_and_value(self, inputs: AgentInputs
                              ) -> tuple[torch.Tensor, torch.Tensor, LSTMState, dict]:
        output, core_state = self._forward(inputs)
        action, extras = self._action_from(output, inputs)
        return action, output["baseline"][0].unsqueeze(-1), core_state, extras
