"""The demo's own code: what ``syllabus-eval demo`` runs, on top of the library.

Usage::

    from syllabus_eval.demo import run_demo
    summary = run_demo(steps=80_000, seed=0, out="runs/demo")

Rooms: :mod:`~syllabus_eval.demo.run` (the run), :mod:`~syllabus_eval.demo.ppo` (a CleanRL-style
PPO loop), :mod:`~syllabus_eval.demo.agents` (reference agents with CleanRL's contracts, also
used by the tests and benchmarks), :mod:`~syllabus_eval.demo.envs` (CartPole task variants)
and :mod:`~syllabus_eval.demo.plots`. The library never imports this package; only the
command line's ``demo`` does.
"""

from syllabus_eval.demo.run import make_agent, make_evaluator, run_demo

__all__ = ["make_agent", "make_evaluator", "run_demo"]
