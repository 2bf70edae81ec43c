"""When evaluations are due, and what a trigger does while one is pending (the runner's
``schedule=``).

Usage::

    schedule = EvalSchedule(every=10_000)            # busy_policy="skip"
    schedule.due(8)        # False
    schedule.due(10_240)   # True: 10,000 was crossed since the last due step
    schedule.due(10_248)   # False
    schedule.due(40_960)   # True, once: 20,000, 30,000 and 40,000 were all crossed

An evaluation is due when the step has crossed a multiple of ``every`` since the last due step,
never when ``step % every == 0``: a vector env's counter moves by ``num_envs`` (or a rollout's
``num_steps * num_envs``) at a time and would jump over most multiples. Several multiples
crossed at once give one evaluation, at the current step. The first is due once ``every`` is
crossed (step 0 is not an evaluation; call ``evaluate`` for a baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syllabus_eval.errors import ArgumentError, Choice, bad_argument, check_choice, check_count


class BusyPolicy(Choice):
    """What a trigger does while an evaluation is pending."""

    SKIP = "skip"  # drop it (trigger_eval returns False; counted in runner.skipped)
    QUEUE = "queue"  # run it after the pending ones
    ERROR = "error"  # raise RuntimeError


@dataclass
class EvalSchedule:
    """When :meth:`EvalRunner.maybe_trigger` evaluates, and what any trigger does while an
    evaluation is pending. A runner takes a copy (its own :attr:`next_due`).

    :meth:`due` is a comparison in the common case, so that a training loop may ask it every
    step.
    """

    every: int | None = None
    """Env steps between the evaluations ``maybe_trigger`` starts (module docs); ``None``:
    none (``maybe_trigger`` then refuses; ``evaluate`` and ``trigger_eval`` still work)."""
    busy_policy: BusyPolicy = BusyPolicy.SKIP
    """What ``trigger_eval`` and ``maybe_trigger`` do while an evaluation is pending:
    ``"skip"`` (the default, with or without ``every``: a training loop goes on, and
    :attr:`EvalRunner.skipped` counts them), ``"queue"`` (run it afterwards) or ``"error"``
    (raise ``RuntimeError``). A blocking ``evaluate`` is never skipped: under ``"skip"`` and
    ``"error"`` it raises, under ``"queue"`` it waits its turn."""
    next_due: int | None = field(default=None, init=False, repr=False, compare=False)
    """The first multiple of ``every`` not yet crossed (state, not a setting)."""

    def __post_init__(self) -> None:
        if self.every is not None:
            self.every = check_count("every", self.every)
            self.next_due = self.every
        self.busy_policy = check_choice("busy_policy", self.busy_policy, BusyPolicy)

    def due(self, step: int) -> bool:
        """Whether an evaluation is due at ``step``; if so, the next is due after the next
        multiple of ``every`` beyond ``step``."""
        if self.every is None:
            raise ArgumentError("schedule", "maybe_trigger needs evaluations every so many "
                                "steps: EvalRunner(..., schedule=EvalSchedule(every=N)), got "
                                "EvalSchedule(every=None)")
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
