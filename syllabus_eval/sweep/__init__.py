"""Evaluating a series of checkpoints: in step order, resumable, watching for new ones.

Usage::

    from syllabus_eval.sweep import evaluate_checkpoints

    with EvalRunner(EnvSpec(make_env, num_envs=8), CleanRLEvaluator(Agent(envs)),
                    num_episodes=20, tasks=tasks) as runner:
        entries = evaluate_checkpoints("runs/ckpts/*.pt", runner, results="results.jsonl",
                                       tensorboard="runs/tb", curve="curve.png",
                                       settings={"env": "MyEnv-v0"})

Habitat's ``evaluate_agent`` evaluates checkpoint after checkpoint, each with its index, step
and TensorBoard writer; this is that loop, made safe to interrupt. Every checkpoint is
evaluated in step order (its own ``step`` entry, see `checkpoints`, else the
step in its file name, see :func:`step_in_name`), with the observation statistics it carries,
and one JSON line per checkpoint file is appended to ``results`` as it finishes:
``{"checkpoint", "sha256", "step", "metrics", "settings_sha256", "settings"}``, or ``"error"``
for a file that does not load or fit (the sweep goes on). Metrics that are not finite (NaN: a
metric no episode had) are written as ``null``, so that strict JSON parsers read the file, and
read back as NaN.

**What a result is keyed by** (issue #19): a checkpoint's content (SHA-256) *and* the settings
it was evaluated with, :func:`sweep_settings`: the env, the evaluator and agent, the episodes,
``max_steps``, tasks or suites, seed, greedy or sampled actions, ... (``settings`` adds what
the runner cannot name, such as an env id). Each line records them and their fingerprint,
``settings_sha256``. A rerun skips the checkpoint files whose content already has metrics in
``results`` under the same settings, so an interrupted sweep loses nothing finished and
repeats nothing; those that failed are evaluated again (after a fix of ``--agent`` or the env,
say), and the latest line of each counts. A rerun with other settings (``max_steps=20`` after
none) evaluates every checkpoint again, and its lines are kept apart from the others' (a
warning names the settings that differ): a sweep reports the numbers of its own settings only.

**Every file is an entry**: a file whose content equals one already evaluated under the same
settings (``agent_9000.pt`` a copy of ``agent_1000.pt``: no update in between) is not evaluated
again, but gets its own entry at its own step, saying whose evaluation it reuses
(``reused_from``; a ``reused from`` column in :func:`sweep_table`).

With ``watch``, the folder is polled for new checkpoints until ``idle_timeout`` seconds pass
without one (Habitat #796: no endless loop); a file is taken once its size stops changing
between two polls (write checkpoints to a temporary name and rename them, as
:func:`~.checkpoints.save_checkpoint` does, to be safe), and a file still being
written counts as activity. Each file is hashed once, and again only when its size or
modification time changes. Whether envs normalise observations is decided per checkpoint:
one that carries statistics is evaluated by ``normalized_runner`` where one is given (a
watched folder may be empty at start-up). At the end, ``curve`` is drawn: return and success
against step, overall (or per suite) and per task, with confidence bands.
"""

from syllabus_eval.sweep.entries import SweepEntry, groups_of, plot_sweep, sweep_table
from syllabus_eval.sweep.files import check_sweep_arguments, checkpoint_files, step_in_name
from syllabus_eval.sweep.run import evaluate_checkpoints
from syllabus_eval.sweep.settings import settings_sha256, sweep_settings

__all__ = ["SweepEntry", "check_sweep_arguments", "checkpoint_files", "evaluate_checkpoints",
           "groups_of", "plot_sweep", "settings_sha256", "step_in_name", "sweep_settings",
           "sweep_table"]
