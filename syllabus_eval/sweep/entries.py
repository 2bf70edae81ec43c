"""A sweep's entries: one per checkpoint file, as written to and read back from its results
file, and the table and the curve drawn from them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus_eval.results.loggers import json_ready
from syllabus_eval.results.report import format_table, plot_curves


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


def read_results(path: str | os.PathLike) -> list[SweepEntry]:
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
