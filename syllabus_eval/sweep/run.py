"""The sweep itself: each checkpoint evaluated once per content and settings, in step order,
its entry written as it finishes; resumed from a results file; a folder watched for more."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from syllabus_eval.errors import ArgumentError, bad_argument, check_number
from syllabus_eval.evaluation.checkpoints import Checkpoint, load_checkpoint
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.results.loggers import JSONLinesLogger, TensorBoardLogger
from syllabus_eval.results.metrics import EvalResult
from syllabus_eval.sweep.entries import SweepEntry, plot_sweep, read_results
from syllabus_eval.sweep.files import (
    check_sweep_arguments,
    checkpoint_files,
    file_sha256,
    in_step_order,
    settled,
    step_order,
)
from syllabus_eval.sweep.settings import ENV_SETTINGS, settings_sha256, sweep_settings

logger = logging.getLogger("syllabus_eval.sweep")

NormalizedRunner = EvalRunner | Callable[[], EvalRunner]


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
    outcomes = _Outcomes(record, read_results(results) if results is not None else [],
                         results)
    sinks = _Sinks(results, tensorboard, on_entry)
    try:
        _poll(source, outcomes, runners, sinks, watch, idle_timeout, poll_interval)
    finally:
        sinks.close()
        runners.close()
    entries = sorted(outcomes.latest.values(),
                     key=lambda entry: step_order(entry.step, entry.checkpoint))
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
            if not settled(path, sizes, watch):
                pending = pending or path in sizes  # being written (not gone)
                continue
            digest = file_sha256(path, digests)
            if digest is not None and (str(path), digest) not in outcomes.tried:
                outcomes.tried.add((str(path), digest))
                fresh.append((path, digest))
        for path, digest, step, checkpoint in in_step_order(fresh):
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
                  if name not in ENV_SETTINGS and theirs.get(name) != self._settings.get(name)]
        if differ:
            raise ArgumentError("normalized_runner", f"expected the settings of runner but for "
                             f"its envs, got {', '.join(differ)}")

    def close(self) -> None:
        if self._built is not None:
            self._built.shutdown()


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
