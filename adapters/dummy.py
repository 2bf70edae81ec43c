"""A stand-in agent: valid random actions, zero values. The fake for curricula and engine tests.

Usage::

    evaluator = DummyEvaluator(env.single_action_space, seed=0)
    action, value, extras = evaluator.get_action_and_value(obs)   # value: zeros [B, 1]
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

from syllabus_eval.errors import bad_argument
from syllabus_eval.query.evaluator import AgentInputs, Clone, Evaluator, LSTMState

_SUPPORTED = (spaces.Discrete, spaces.MultiDiscrete, spaces.Box, spaces.MultiBinary)


class DummyEvaluator(Evaluator):
    """Random valid actions for ``action_space``; any recurrent state is passed through.

    Args:
        action_space: the single-env action space (``Discrete``, ``MultiDiscrete``, ``Box``
            or ``MultiBinary``).
        seed: seeds the action sampler.
        is_lstm: require a recurrent state in queries, as a recurrent agent would.

    Greedy actions (``deterministic=True``) are a fixed valid action: the lowest one for
    discrete spaces, zero clipped into the bounds for ``Box``.
    """

    obs_dtype = None
    clone_rules: ClassVar[dict[str, Clone]] = {
        "action_space": Clone.COPY,  # a clone draws from its own random generator
        "_dtype": Clone.SHARE,
    }

    def __init__(self, action_space: spaces.Space, device: str | torch.device = "cpu",
                 preprocess_obs: Any = None, *, seed: int | None = None, is_lstm: bool = False,
                 **kwargs: Any) -> None:
        if not isinstance(action_space, _SUPPORTED):
            raise bad_argument("action_space", "a Discrete, MultiDiscrete, Box or MultiBinary "
                               "space", action_space)
        super().__init__(None, device, preprocess_obs, copy_agent=False, is_lstm=is_lstm,
                         **kwargs)
        self.action_space = copy.deepcopy(action_space)
        self.action_space.seed(seed)
        self._dtype = torch.float32 if isinstance(action_space, spaces.Box) else torch.int64

    def initial_lstm_state(self, batch_size: int) -> LSTMState | None:
        return (torch.zeros(1, batch_size, 1, device=self.device),) if self.is_lstm else None

    def _prepare_lstm(self, lstm_state: Any, done: Any, batch_size: int
                      ) -> tuple[LSTMState | None, torch.Tensor | None]:
        if self.is_lstm:
            return super()._prepare_lstm(lstm_state, done, batch_size)
        return lstm_state, None  # passed through untouched

    def _actions(self, inputs: AgentInputs) -> torch.Tensor:
        space = self.action_space
        if inputs.deterministic:
            if isinstance(space, spaces.Box):
                one = np.clip(np.zeros(space.shape), space.low, space.high)
            else:
                one = getattr(space, "start", np.zeros(space.shape, dtype=np.int64))
            actions = np.stack([np.asarray(one)] * inputs.batch_size)
        else:
            actions = np.stack([np.asarray(space.sample()) for _ in range(inputs.batch_size)])
        return torch.as_tensor(actions, dtype=self._dtype, device=self.device)

    def _values(self, inputs: AgentInputs) -> torch.Tensor:
        return torch.zeros(inputs.batch_size, 1, device=self.device)

    def _get_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        return self._actions(inputs), inputs.lstm_state, {}

    def _get_value(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        return self._values(inputs), inputs.lstm_state, {}

    def _get_action_and_value(self, inputs: AgentInputs
                              ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None, dict]:
        # Action first, value second (an older Dummy evaluator swapped them).
        return self._actions(inputs), self._values(inputs), inputs.lstm_state, {}
