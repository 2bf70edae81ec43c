"""Loggers for results: TensorBoard event files and JSON lines, as ``on_result`` callbacks.

Usage::

    from syllabus_eval.results.loggers import JSONLinesLogger, TensorBoardLogger

    loggers = [TensorBoardLogger("runs/tb"), JSONLinesLogger("runs/eval.jsonl")]
    runner = EvalRunner(make_env, evaluator, schedule=EvalSchedule(every=10_000),
                        callbacks=loggers)

Each logger is a callable that takes an :class:`~syllabus_eval.EvalResult` (a flat dict of
numbers). :class:`TensorBoardLogger` writes each metric as a scalar at the result's step
(``torch.utils.tensorboard``; ``pip install 'syllabus-eval[tensorboard]'``);
:class:`JSONLinesLogger` appends one line of strict JSON per result (NaN as ``null``) and
flushes it, so a crash loses nothing already written. Weights & Biases needs no logger of
ours: ``callbacks=lambda result: wandb.log(dict(result), step=result.step)`` (or plain
``callbacks=wandb.log``, which logs at W&B's own step).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from syllabus_eval.results.metrics import EvalResult


class _Logger:
    """What both loggers share: a sink (a file, a writer) written under a lock, closed once."""

    _sink: Any

    def __init__(self) -> None:
        self._lock = threading.Lock()  # results come from the runner's thread, close from any

    def close(self) -> None:
        with self._lock:
            self._sink.close()

    def __enter__(self) -> _Logger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class JSONLinesLogger(_Logger):
    """Appends each result's metrics as one JSON object per line to ``path``.

    Args:
        path: the file (created with its folder; appended to if it exists).
        fsync: also ask the OS to write each line to disk (a machine crash, not only a
            process crash, then loses nothing written).
        settings: also write the settings the results were evaluated with
            (``result.settings``, the runner's typed parts) as a line ``{"settings": {...}}``
            before the first result of a run, and again when they change; off by default, so
            that every line is a result.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False,
                 settings: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self._settings_written: Any = None
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as existing:
                existing.seek(-1, os.SEEK_END)
                torn = existing.read(1) != b"\n"
        self._sink = self.path.open("a", encoding="utf-8")
        if torn:  # a crash cut the last line short: the next one starts on its own line
            self._sink.write("\n")

    def __call__(self, result: EvalResult) -> None:
        settings = getattr(result, "settings", None)
        if self.settings and settings is not None and settings != self._settings_written:
            self.write({"settings": settings})
            self._settings_written = settings
        self.write(_plain(result))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append any JSON-serializable mapping as one line of strict JSON (non-finite
        numbers as ``null``), flushed."""
        line = json.dumps(json_ready(record), allow_nan=False)
        with self._lock:
            self._sink.write(line + "\n")
            self._sink.flush()
            if self.fsync:
                os.fsync(self._sink.fileno())


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities) replaced by ``None``, through
    dicts, lists and tuples: what ``json.dumps(..., allow_nan=False)`` takes (strict
    parsers reject the ``NaN`` Python writes by default)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


class TensorBoardLogger(_Logger):
    """Writes each metric of each result as a TensorBoard scalar at the result's step.

    Args:
        log_dir: the folder of the event files.
        **writer_kwargs: further ``torch.utils.tensorboard.SummaryWriter`` arguments.

    A result without a step is logged at the number of results logged before it. Events are
    flushed after each result.

    Raises:
        ImportError: TensorBoard is not installed.
    """

    def __init__(self, log_dir: str | os.PathLike, **writer_kwargs: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("TensorBoardLogger needs TensorBoard, which is not installed: "
                              "pip install 'syllabus-eval[tensorboard]'") from error
        super().__init__()
        self.log_dir = Path(log_dir)
        self._sink = SummaryWriter(log_dir=str(self.log_dir), **writer_kwargs)
        self._logged = 0

    def __call__(self, result: EvalResult) -> None:
        with self._lock:
            step = result.step if result.step is not None else self._logged
            for name, value in _plain(result).items():
                self._sink.add_scalar(name, value, global_step=step)
            self._sink.flush()
            self._logged += 1


def _plain(result: EvalResult) -> dict[str, float | int]:
    """The metrics as plain Python numbers (JSON and TensorBoard take nothing else)."""
    return {name: value if isinstance(value, int) else float(value)
            for name, value in result.items()}
