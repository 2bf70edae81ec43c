"""Evaluating a series of checkpoints: in step order, resumable, watching for new ones.

Usage::

    from syllabus_eval.sweep import evaluate_checkpoints

    with EvalRunner(make_env, CleanRLEvaluator(Agent(envs)), num_envs=8, num_episodes=20,
                    tasks=tasks) as runner:
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

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from syllabus_eval.errors import ArgumentError, bad_argument, check_flag, check_number
from syllabus_eval.evaluation.checkpoints import Checkpoint, load_checkpoint
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.results.loggers import JSONLinesLogger, TensorBoardLogger, json_ready
from syllabus_eval.results.metrics import EvalResult
from syllabus_eval.results.report import format_table, plot_curves
from syllabus_eval.rollout import GivenEnvs

logger = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".ckpt")  # what a folder's checkpoints are named
_GLOB_MAGIC = re.compile(r"[*?[]")
# A word that names a step counter, and a number right after it (``step_10000``,
# ``global_step=5``, ``iter3``) or right before it (SB3's ``rl_model_10000_steps``).
_STEP_WORD = r"(?:steps?|iter(?:ation)?s?|updates?|frames?)"
_AFTER_WORD = re.compile(_STEP_WORD + r"[-_=]?(\d+)", re.IGNORECASE)
_BEFORE_WORD = re.compile(r"(\d+)[-_]?" + _STEP_WORD + r"(?![a-z])", re.IGNORECASE)
# The settings a normalising runner may differ from the sweep's runner in: its envs.
_ENV_SETTINGS = ("env",)

NormalizedRunner = EvalRunner | Callable[[], EvalRunner]


@dataclass
class SweepEntry:
    """One checkpoint file of a sweep: its metrics, or the error that stopped it.

    Attributes:
        checkpoint: the file.
        sha256: the SHA-256 of its content.
        step: its training step: its own ``step`` entry, else the one in its name.
        metrics: the evaluation's metrics (empty where it failed).
        error: why it has no metrics; ``None``: it has.
        reused_from: the file whose evaluation ``metrics`` are: one of the same content,
            evaluated under the same settings, so this one was not evaluated again;
            ``None``: its own evaluation.
        settings: what its numbers depend on besides the content (:func:`sweep_settings`).
        settings_sha256: their fingerprint (:func:`settings_sha256`).
    """

    checkpoint: str
    sha256: str
    step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    reused_from: str | None = None
    settings: dict[str, Any] | None = None
    settings_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a results line: strict JSON, non-finite metrics as ``None``."""
        return json_ready(self._line())

    def _line(self) -> dict[str, Any]:
        """The results line, NaN as it is (:class:`JSONLinesLogger` writes it as ``null``)."""
        entry: dict[str, Any] = {"checkpoint": self.checkpoint, "sha256": self.sha256,
                                 "step": self.step}
        if self.reused_from is not None:
            entry["reused_from"] = self.reused_from
        entry.update({"error": self.error} if self.error else {"metrics": self.metrics})
        entry.update(settings_sha256=self.settings_sha256, settings=self.settings)
        return entry


def evaluate_checkpoints(source: str | os.PathLike | Iterable[str | os.PathLike],
                         runner: EvalRunner, *, results: str | os.PathLike | None = None,
                         tensorboard: str | os.PathLike | None = None,
                         curve: str | os.PathLike | None = None, watch: bool = False,
                         idle_timeout: float = 60.0, poll_interval: float = 2.0,
                         on_entry: Callable[[SweepEntry], Any] | None = None,
                         settings: Mapping[str, Any] | None = None,
                         normalized_runner: NormalizedRunner | None = None
                         ) -> list[SweepEntry]:
    """Evaluate every checkpoint of ``source`` with ``runner`` (module docs).

    Args:
        source: a folder (its ``.pt``, ``.pth`` and ``.ckpt`` files), a glob pattern, or files.
            Without ``watch`` it must hold at least one checkpoint; with it, an empty or
            not yet made folder is waited for (its parent folder must exist).
        runner: evaluates each checkpoint's state dict (``runner.evaluate``).
        results: the JSON-lines file to append to and resume from (``None``: none).
        tensorboard: a folder: each checkpoint's metrics as TensorBoard scalars at its step.
        curve: a PNG of return (and success) against step, per task, written at the end. Its
            folder is checked to be writable first; should drawing still fail, the entries
            are returned all the same, with a warning logged.
        watch: keep polling ``source`` for new checkpoints until ``idle_timeout`` seconds
            pass without one.
        idle_timeout: seconds without a new checkpoint after which watching stops.
        poll_interval: seconds between polls.
        on_entry: called with each entry as it is written.
        settings: ``{name: value}``: what the numbers depend on that ``runner`` cannot name
            (an env id, the agent's ``module:Class``); added to :func:`sweep_settings`, so
            that results of other values are not reused.
        normalized_runner: the runner of checkpoints that carry observation statistics, where
            ``runner``'s envs take none (an env id without the training wrappers): its envs
            have ``NormalizeObservation``, and its settings are ``runner``'s. A runner, or a
            function that builds one when the first such checkpoint comes (the sweep shuts
            that one down at its end). ``None``: ``runner`` evaluates every checkpoint.

    Returns:
        The entries under these settings, of this sweep and of the ones in ``results``
        before it, in step order: one per checkpoint file and content, its latest outcome.

    Raises:
        ValueError: a bad argument (named), e.g. a ``source`` with no checkpoint.
    """
    if not isinstance(runner, EvalRunner):
        raise bad_argument("runner", "an EvalRunner", runner)
    check_sweep_arguments(source, results=results, tensorboard=tensorboard, curve=curve,
                          watch=watch, settings=settings)
    check_number("idle_timeout", idle_timeout, 0.0)
    check_number("poll_interval", poll_interval, 0.0, low_open=True)
    if on_entry is not None and not callable(on_entry):
        raise bad_argument("on_entry", "a callable taking a SweepEntry, or None", on_entry)
    record = sweep_settings(runner, settings)
    runners = _Runners(runner, normalized_runner, record, settings)
    outcomes = _Outcomes(record, _read_results(results) if results is not None else [],
                         results)
    sinks = _Sinks(results, tensorboard, on_entry)
    try:
        _poll(source, outcomes, runners, sinks, watch, idle_timeout, poll_interval)
    finally:
        sinks.close()
        runners.close()
    entries = sorted(outcomes.latest.values(),
                     key=lambda entry: _step_order(entry.step, entry.checkpoint))
    if curve is not None:
        try:
            plot_sweep(entries, curve)
        except Exception as error:  # the sweep's entries matter more than its picture
            logger.warning("curve %s not written: %r", curve, error)
    return entries


def _poll(source: Any, outcomes: _Outcomes, runners: _Runners, sinks: _Sinks, watch: bool,
          idle_timeout: float, poll_interval: float) -> None:
    """Evaluate what ``source`` holds that ``outcomes`` lacks, polling it while watching."""
    sizes: dict[Path, int] = {}  # a file's size at the last poll: taken once it holds still
    digests: dict[Path, tuple[int, int, str]] = {}  # (size, mtime) at hashing, and the hash
    last_new = time.monotonic()
    while True:
        fresh, pending = [], False
        for path in checkpoint_files(source):
            if not _settled(path, sizes, watch):
                pending = pending or path in sizes  # being written (not gone)
                continue
            digest = _sha256(path, digests)
            if digest is not None and (str(path), digest) not in outcomes.tried:
                outcomes.tried.add((str(path), digest))
                fresh.append((path, digest))
        for path, digest, step, checkpoint in _in_step_order(fresh):
            sinks.write(outcomes.take(path, digest, step, checkpoint, runners))
        if fresh or pending:  # a file still growing counts as a new one: wait for it
            last_new = time.monotonic()
        if not watch or time.monotonic() - last_new >= idle_timeout:
            return
        time.sleep(poll_interval)


class _Sinks:
    """Where each entry goes as it is made: the results file, TensorBoard, ``on_entry``."""

    def __init__(self, results: Any, tensorboard: Any,
                 on_entry: Callable[[SweepEntry], Any] | None) -> None:
        self.lines = None if results is None else JSONLinesLogger(results, fsync=True)
        self.board = None if tensorboard is None else TensorBoardLogger(tensorboard)
        self.on_entry = on_entry

    def write(self, entry: SweepEntry) -> None:
        if self.lines is not None:
            self.lines.write(entry._line())
        if self.board is not None and entry.error is None:
            self.board(EvalResult(entry.metrics, [], entry.step))
        if self.on_entry is not None:
            self.on_entry(entry)

    def close(self) -> None:
        for sink in (self.lines, self.board):
            if sink is not None:
                sink.close()


class _Outcomes:
    """The entries under one sweep's settings: those ``results`` held, then this sweep's.

    Lines of other settings are left in the file but never reused: their numbers are of
    another evaluation (issue #19: a rerun with ``max_steps=20`` reported returns of 380).
    """

    def __init__(self, settings: dict[str, Any], previous: list[SweepEntry],
                 results: Any) -> None:
        self.settings, self.fingerprint = settings, settings_sha256(settings)
        # By (file, content): the last line of each counts.
        self.latest: dict[tuple[str, str], SweepEntry] = {}
        self.evaluated: dict[str, SweepEntry] = {}  # by content: one with metrics
        others = []
        for entry in previous:
            if entry.settings_sha256 == self.fingerprint:
                self.add(entry)
            else:
                others.append(entry)
        if others:
            _warn_other_settings(results, others, settings)
        # Files with metrics are done; failed ones are tried again, once per sweep.
        self.tried = {key for key, entry in self.latest.items() if entry.error is None}

    def add(self, entry: SweepEntry) -> None:
        self.latest[entry.checkpoint, entry.sha256] = entry
        if entry.error is None:
            self.evaluated.setdefault(entry.sha256, entry)

    def take(self, path: Path, digest: str, step: int | None, checkpoint: Checkpoint | None,
             runners: _Runners) -> SweepEntry:
        """The entry of one file: a reuse of an evaluation of its content, else its own."""
        done = self.evaluated.get(digest)
        if done is not None and step is not None:
            # The same weights and statistics under the same settings give the same numbers:
            # only the step they are plotted at is this file's own.
            metrics = dict(done.metrics)
            if "eval/step" in metrics:
                metrics["eval/step"] = float(step)
            entry = SweepEntry(str(path), digest, step, metrics,
                               reused_from=done.reused_from or done.checkpoint)
        else:
            entry = _evaluate(path, digest, step, checkpoint, runners)
        entry.settings, entry.settings_sha256 = self.settings, self.fingerprint
        self.add(entry)
        return entry


def _warn_other_settings(results: Any, others: list[SweepEntry],
                         settings: dict[str, Any]) -> None:
    """Say why a rerun evaluates again: ``results`` holds entries of other settings."""
    last = others[-1].settings
    if last is None:
        differ = "settings not recorded (an older version wrote them)"
    else:
        differ = ", ".join(f"{name} {last.get(name)!r} there, {settings.get(name)!r} now"
                           for name in sorted({*last, *settings})
                           if last.get(name) != settings.get(name))
    logger.warning("%s: %d entries were evaluated with other settings (%s): they are kept "
                   "apart, and a checkpoint without an entry of these settings is evaluated "
                   "again", results, len(others), differ)


def sweep_settings(runner: EvalRunner, settings: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """What the numbers of ``runner``'s evaluations depend on besides the checkpoint.

    The env factory and the evaluator with its agent (by ``module.qualname``: a lambda's name
    tells little, so pass ``settings``), ``num_envs`` (episode quotas and seeds are per
    slot), ``num_episodes``, ``max_steps``, ``deterministic``, ``seed``, ``tasks`` or
    ``suites``, ``success_key``, ``info_keys``, ``interchangeable_slots``, ``set_task``,
    ``metrics_fn`` and ``ci``; then ``settings`` over them. Not the backend, the device or
    videos: they do not change the numbers. JSON-plain, as recorded on each results line.
    """
    plan = runner.plan[0]
    backend = runner._backend  # the runner keeps the env factory and the slots there
    evaluator = runner._evaluator
    agent = getattr(evaluator, "agent", None)
    found = {
        "env": _name(backend.make_env),
        "evaluator": None if evaluator is None else (
            _name(type(evaluator)) + ("" if agent is None else f"({_name(type(agent))})")),
        "num_envs": backend.num_envs,
        "num_episodes": plan.num_episodes,
        "max_steps": plan.max_steps,
        "deterministic": plan.deterministic,
        "seed": plan.seed,
        "tasks": None if plan.suite is not None else plan.tasks,
        "suites": None if plan.suite is None else {s.suite: s.tasks for s in runner.plan},
        "success_key": plan.success_key,
        "info_keys": plan.info_keys,
        "interchangeable_slots": plan.interchangeable_slots,
        "set_task": _name(backend.set_task),
        "metrics_fn": _name(runner.metrics_fn),
        "ci": runner.ci,
    }
    return _plain({**found, **(settings or {})})


def settings_sha256(settings: Mapping[str, Any]) -> str:
    """The fingerprint of :func:`sweep_settings`: the SHA-256 of their canonical JSON (sorted
    keys), the same in every run and after a round trip through a results file."""
    text = json.dumps(_plain(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON-plain data: numbers, strings, lists and string-keyed dicts; anything
    else by its :func:`_name`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return _name(value)


def _name(thing: Any) -> str | None:
    """A name of a function, class, partial or env that is the same in every run (never a
    memory address, which would make every rerun look like other settings)."""
    if thing is None:
        return None
    if isinstance(thing, GivenEnvs):
        thing = thing.envs
    if isinstance(thing, (gym.Env, gym.vector.VectorEnv)):
        spec = getattr(thing, "spec", None)
        return spec.id if spec is not None else _name(type(thing))
    if isinstance(thing, functools.partial):
        arguments = [json.dumps(_plain(argument)) for argument in thing.args]
        arguments += [f"{key}={json.dumps(_plain(item))}" for key, item in
                      sorted(thing.keywords.items())]
        return f"{_name(thing.func)}({', '.join(arguments)})"
    if not hasattr(thing, "__qualname__"):
        thing = type(thing)  # an instance: its class names it
    return f"{thing.__module__}.{thing.__qualname__}"


class _Runners:
    """The runner of each checkpoint: ``normalized`` for one that carries observation
    statistics, where given (built when first needed from a factory, and then shut down at
    the end), else ``runner``."""

    def __init__(self, runner: EvalRunner, normalized: NormalizedRunner | None,
                 settings: dict[str, Any], extra: Mapping[str, Any] | None) -> None:
        if normalized is not None and not isinstance(normalized, EvalRunner) \
                and not callable(normalized):
            raise bad_argument("normalized_runner", "an EvalRunner, a function returning "
                               "one, or None", normalized)
        self.runner, self._normalized, self._built = runner, normalized, None
        self._settings, self._extra = settings, extra
        if isinstance(normalized, EvalRunner):
            self._check(normalized)

    def pick(self, checkpoint: Checkpoint) -> EvalRunner:
        if checkpoint.obs_norm is None or self._normalized is None:
            return self.runner
        if isinstance(self._normalized, EvalRunner):
            return self._normalized
        if self._built is None:
            built = self._normalized()
            if not isinstance(built, EvalRunner):
                raise bad_argument("normalized_runner", "a function returning an EvalRunner",
                                   built)
            try:
                self._check(built)
            except ValueError:
                built.shutdown()
                raise
            self._built = built
        return self._built

    def _check(self, normalized: EvalRunner) -> None:
        """Its numbers are comparable with ``runner``'s: the same settings but for the env."""
        theirs = sweep_settings(normalized, self._extra)
        differ = [f"{name} {theirs.get(name)!r} (runner: {self._settings.get(name)!r})"
                  for name in sorted({*theirs, *self._settings})
                  if name not in _ENV_SETTINGS and theirs.get(name) != self._settings.get(name)]
        if differ:
            raise ArgumentError("normalized_runner", f"expected the settings of runner but for "
                             f"its envs, got {', '.join(differ)}")

    def close(self) -> None:
        if self._built is not None:
            self._built.shutdown()


def check_sweep_arguments(source: Any, *, results: Any = None, tensorboard: Any = None,
                          curve: Any = None, watch: bool = False, settings: Any = None) -> None:
    """The checks :func:`evaluate_checkpoints` makes of its arguments before evaluating
    anything, for callers that want them before building a runner (the command line).

    Raises:
        ValueError: naming the argument, what was expected and what came.
    """
    check_flag("watch", watch)
    if settings is not None and (not isinstance(settings, Mapping) or not all(
            isinstance(name, str) for name in settings)):
        raise bad_argument("settings", "a dict {name: value} or None", settings)
    _check_source(source, watch)
    for name, value in (("results", results), ("tensorboard", tensorboard), ("curve", curve)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise bad_argument(name, "a path or None", value)
    if results is not None:
        if Path(results).is_dir():
            raise ArgumentError("results", f"expected a JSON-lines file, got the folder "
                             f"{str(results)!r}")
        _check_writable("results", Path(results).parent)
    if tensorboard is not None:
        if Path(tensorboard).exists() and not Path(tensorboard).is_dir():
            raise ArgumentError("tensorboard", f"expected a folder, got the file "
                             f"{str(tensorboard)!r}")
        _check_writable("tensorboard", Path(tensorboard))
    if curve is not None:
        if Path(curve).is_dir():
            raise ArgumentError("curve", f"expected an image file name, got the folder "
                             f"{str(curve)!r}")
        _check_writable("curve", Path(curve).parent)
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        suffix = Path(curve).suffix[1:].lower()
        if suffix and suffix not in formats:  # matplotlib would say so only after the sweep
            raise ArgumentError("curve", f"expected an image file ending in one of "
                             f"{', '.join('.' + f for f in sorted(formats))}, got "
                             f"{str(curve)!r}")


def _check_source(source: Any, watch: bool) -> None:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not isinstance(text, str) or not text:
            raise bad_argument("source", "a folder, a glob pattern or checkpoint files", source)
        if watch:  # the checkpoints may come later, but not into a folder that cannot exist
            literal = []
            for part in Path(text).parts:
                if _GLOB_MAGIC.search(part):
                    break
                literal.append(part)
            parent = Path(*literal).parent if literal else Path(".")
            if not parent.is_dir():
                raise ArgumentError("source", f"expected a folder or glob whose parent folder "
                                 f"exists, got {text!r} ({str(parent)!r} is no folder)")
            return
        if not checkpoint_files(source):
            if Path(text).is_dir():
                found = (f"a folder without {', '.join(SUFFIXES)} files")
            elif _GLOB_MAGIC.search(text):
                found = "a glob pattern that matches no file"
            else:
                found = "no such file or folder"
            raise ArgumentError("source", f"expected a folder of checkpoints, a glob pattern or "
                             f"files, got {text!r}: {found}")
        return
    try:
        paths = list(source)
    except TypeError:
        raise bad_argument("source", "a folder, a glob pattern or an iterable of checkpoint "
                           "files", source) from None
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise bad_argument("source", "checkpoint file paths", path)
        if not watch and not Path(path).is_file():
            raise ArgumentError("source", f"expected checkpoint files, got {str(path)!r}: no such "
                             "file")
    if not paths and not watch:
        raise ArgumentError("source", "expected at least one checkpoint file, got an empty list")


def _check_writable(name: str, folder: Path) -> None:
    """``folder`` exists and is writable, or can be made: its nearest existing ancestor is a
    writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ArgumentError(name, f"expected a path whose folder can be made, got one under "
                         f"the file {str(existing)!r}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArgumentError(name, f"expected a writable folder, got {str(folder)!r} "
                         f"({str(existing)!r} is not writable)")


def groups_of(metrics: dict[str, float]) -> dict[str, str]:
    """``{label: prefix}`` of what ``metrics`` reports on: overall (``"all"``: ``eval/``) or
    each suite (``"train"``: ``eval/train/``), then each task, inside its suite where there
    are suites (``"train/a"``: ``eval/train/task/a/``)."""
    suites = _suites(metrics)
    groups = {"all": "eval/"} if "eval/reward" in metrics else {}
    groups.update({suite: f"eval/{suite}/" for suite in suites})
    for scope, label in [("eval/", ""), *((f"eval/{s}/", f"{s}/") for s in suites)]:
        start, end = f"{scope}task/", "/reward"
        names = sorted(key[len(start):-len(end)] for key in metrics
                       if key.startswith(start) and key.endswith(end))
        groups.update({label + name: f"{start}{name}/" for name in names})
    return groups


def _suites(metrics: dict[str, float]) -> list[str]:
    """The suites of a result (``eval/<suite>/reward``), in the runner's order."""
    return [key.split("/")[1] for key in metrics
            if key.count("/") == 2 and key.startswith("eval/")
            and key.endswith("/reward") and key != "eval/task/reward"]


def sweep_table(entries: Iterable[SweepEntry]) -> str:
    """A Markdown table of a sweep: step, checkpoint, return with its interval, success; with
    suites (``EvalRunner(suites=...)``), a row per suite, named in a ``suite`` column; where a
    file reuses the evaluation of another of the same content, that file's name in a
    ``reused from`` column."""
    entries = list(entries)
    with_suites = any(_suites(entry.metrics) for entry in entries)
    with_reuse = any(entry.reused_from is not None for entry in entries)
    rows = []
    for entry in entries:
        name = Path(entry.checkpoint).name
        if with_reuse:  # right after the file's own name: whose numbers these are
            name = [name, "" if entry.reused_from is None else Path(entry.reused_from).name]
        else:
            name = [name]
        if entry.error is not None:
            rows.append([entry.step, *name, *([""] if with_suites else []), "error",
                         entry.error[:60], ""])
            continue
        scopes = [(suite, f"eval/{suite}/") for suite in _suites(entry.metrics)
                  if with_suites] or [("", "eval/")]
        for suite, prefix in scopes:
            m = {key[len(prefix):]: value for key, value in entry.metrics.items()
                 if key.startswith(prefix)}
            low, high = m.get("reward_ci_low", math.nan), m.get("reward_ci_high", math.nan)
            interval = (f"[{low:.1f}, {high:.1f}]" if math.isfinite(low) and math.isfinite(high)
                        else "")  # NaN: fewer than two episodes
            reward = f"{m['reward']:.1f}" if "reward" in m else ""
            success = f"{m['success']:.0%}" if "success" in m else ""
            rows.append([entry.step, *name, *([suite] if with_suites else []), reward,
                         interval, success])
    header = ["step", "checkpoint", *(["reused from"] if with_reuse else []),
              *(["suite"] if with_suites else []), "return", "95% interval", "success"]
    return format_table(rows, header)


def plot_sweep(entries: Iterable[SweepEntry], path: str | os.PathLike) -> Path:
    """``curve.png``: return and success against step, overall (or per suite) and per task,
    with bands."""
    results = [{**entry.metrics, "eval/step": entry.step} for entry in entries
               if entry.error is None and entry.step is not None]
    groups: dict[str, str] = {}
    for result in results:
        groups.update(groups_of(result))
    # Overall and suites first, then the tasks: the order groups_of gives one result.
    ordered = sorted(groups.items(), key=lambda item: item[1].count("/task/"))
    return plot_curves(results, dict(ordered) or {"all": "eval/"}, path)


def _evaluate(path: Path, digest: str, step: int | None, checkpoint: Checkpoint | None,
              runners: _Runners) -> SweepEntry:
    """The entry of one checkpoint at ``step`` (its step order's), loading it unless
    ``checkpoint`` is given, evaluated by the runner its statistics call for."""
    try:
        if checkpoint is None:
            checkpoint = load_checkpoint(path)
            # Its own step, as in step order, also for a file that did not load when ordered.
            step = checkpoint.step if checkpoint.step is not None else step
        if step is None:
            raise ValueError("no step: neither a 'step' entry nor a number in its name")
        result = runners.pick(checkpoint).evaluate(checkpoint.state_dict, step=step,
                                                   obs_norm=checkpoint.obs_norm)
    except Exception as error:  # reported in the results; the sweep goes on
        logger.warning("checkpoint %s: %r", path, error)
        return SweepEntry(str(path), digest, step, error=f"{type(error).__name__}: "
                          f"{error.__cause__ or error}")
    return SweepEntry(str(path), digest, step, {k: float(v) for k, v in result.items()})


def checkpoint_files(source: Any) -> list[Path]:
    """The checkpoint files of a folder (``.pt``, ``.pth``, ``.ckpt``), a glob or a list."""
    if isinstance(source, (str, os.PathLike)):
        if Path(source).is_dir():
            return sorted(p for p in Path(source).iterdir()
                          if p.suffix in SUFFIXES and not p.name.startswith("."))
        return sorted(Path(p) for p in glob.glob(str(source)))
    return [Path(p) for p in source]


def _settled(path: Path, sizes: dict[Path, int], watch: bool) -> bool:
    """Whether ``path`` is complete: always without watching; with it, once its size is the
    same at two polls in a row."""
    try:
        size = path.stat().st_size
    except OSError:  # gone meanwhile
        sizes.pop(path, None)
        return False
    before, sizes[path] = sizes.get(path), size
    return not watch or before == size


def _step_order(step: int | None, name: str) -> tuple[bool, int, str]:
    """The sort key of step order: by step, those without one last, then by name."""
    return step is None, step or 0, name


def _in_step_order(fresh: list[tuple[Path, str]]
                   ) -> list[tuple[Path, str, int | None, Checkpoint | None]]:
    """``fresh`` in step order, each with its step and with its checkpoint where it had to
    be loaded whole to learn its step, else ``None``: loaded when evaluated."""
    keyed = []
    for path, digest in fresh:
        own, checkpoint = _own_step(path)
        step = own if own is not None else step_in_name(path)
        keyed.append((_step_order(step, str(path)), (path, digest, step, checkpoint)))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def _own_step(path: Path) -> tuple[int | None, Checkpoint | None]:
    """A checkpoint's own ``step`` entry, and the checkpoint if it was read whole (a file
    ``torch.load`` cannot map), so as not to read it twice."""
    try:
        checkpoint = load_checkpoint(path, mmap=True)
    except Exception:  # reported when it is evaluated
        return None, None
    step = checkpoint.step if isinstance(checkpoint.step, int) else None
    # A mapped one is dropped: its tensors are read only when used, and a file rewritten in
    # place by then would change them, or kill the process (SIGBUS) while it is shorter.
    return step, None if zipfile.is_zipfile(path) else checkpoint


def step_in_name(path: str | os.PathLike) -> int | None:
    """The training step a checkpoint's file name gives, for a file without a ``step`` entry.

    The number right after a step word (``step``, ``steps``, ``global_step``, ``timesteps``,
    ``iter``, ``iteration``, ``update``, ``frames``; any case, joined by nothing, ``_``, ``-``
    or ``=``: ``step_10000``, ``steps10000``, ``global_step=5``), else the number right before
    one (SB3's ``rl_model_10000_steps``), the last such if several; else the largest number
    in the name (``agent_10000_seed1`` is step 10000, not 1); else ``None``.
    """
    stem = Path(path).stem
    for pattern in (_AFTER_WORD, _BEFORE_WORD):
        found = pattern.findall(stem)
        if found:
            return int(found[-1])
    numbers = re.findall(r"\d+", stem)
    return max(map(int, numbers)) if numbers else None


def _sha256(path: Path, cache: dict[Path, tuple[int, int, str]]) -> str | None:
    """The file's SHA-256, computed again only when its size or modification time changed
    since (watching polls the same files again and again); ``None`` if it is gone."""
    try:
        stat = path.stat()
        known = cache.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:  # gone meanwhile
        return None
    cache[path] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
    return digest.hexdigest()


def _read_results(path: str | os.PathLike) -> list[SweepEntry]:
    """The entries already in a results file, in file order; lines a crash cut short are
    passed over, and ``null`` metrics read back as NaN. Lines written before settings were
    recorded have none (``settings_sha256`` ``None``): no settings match them."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            metrics = {key: math.nan if value is None else float(value)
                       for key, value in data.get("metrics", {}).items()}
            settings = data.get("settings")
            entries.append(SweepEntry(data["checkpoint"], data["sha256"], data["step"],
                                      metrics, data.get("error"), data.get("reused_from"),
                                      settings if isinstance(settings, dict) else None,
                                      data.get("settings_sha256")))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return entries
