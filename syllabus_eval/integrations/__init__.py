"""Integrations with training libraries, each an optional extra: :mod:`.sb3` (Stable-Baselines3).

Usage::

    from syllabus_eval.integrations.sb3 import EvalRunnerCallback
    model.learn(100_000, callback=EvalRunnerCallback(runner))
"""
