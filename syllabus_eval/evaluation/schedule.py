"""When evaluations are due: every ``N`` env steps of a step counter that jumps.

Usage::

    schedule = EvalSchedule(every=10_000)
    schedule.due(8)        # False
    schedule.due(10_240)   # True: 10,000 was crossed since the last due step
    schedule.due(10_248)   # False
    schedule.due(40_960)   # True, once: 20,000, 30,000 and 40,000 were all crossed

An evaluation is due when the step has crossed a multiple of ``N`` since the last due step,
never when ``step % N == 0``: a vector env's counter moves by ``num_envs`` (or a rollout's
``num_steps * num_envs``) at a time and would jump over most multiples. Several multiples
crossed at once give one evaluation, at the current step. The first is due once ``N`` is
crossed (step 0 is not an evaluation; call ``evaluate`` for a baseline).
"""

from __future__ import annotations

from typing import Any

from syllabus_eval.errors import bad_argument, check_count


class EvalSchedule:
    """Evaluations every ``every`` env steps (module docs); :meth:`due` is a comparison in the
    common case, so that a training loop may ask it every step."""

    __slots__ = ("every", "next_due")

    def __init__(self, every: int) -> None:
        self.every = check_count("eval_every", every)
        self.next_due = self.every  # the first multiple of `every` not yet crossed

    def due(self, step: int) -> bool:
        """Whether an evaluation is due at ``step``; if so, the next is due after the next
        multiple of ``every`` beyond ``step``."""
        if step < self.next_due:
            return False
        self.next_due = (step // self.every + 1) * self.every
        return True

    def state_dict(self) -> dict[str, int]:
        return {"eval_every": self.every, "next_due": self.next_due}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Carry on a resumed run's schedule; a changed ``eval_every`` restarts it at the
        next multiple of the new one after the saved point."""
        try:
            next_due, every = int(state["next_due"]), int(state["eval_every"])
        except (KeyError, TypeError, ValueError):
            raise bad_argument("state['schedule']", "the schedule of EvalRunner.state_dict()",
                               state) from None
        reached = next_due - every  # the last due step was at least this far
        self.next_due = next_due if every == self.every else (
            reached // self.every + 1) * self.every
