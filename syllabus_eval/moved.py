"""The import paths modules had before they moved into rooms, kept working.

``import syllabus_eval.runner`` gives the very module ``syllabus_eval.evaluation.runner``
(one module object, so monkeypatching and ``isinstance`` see the same things), as do its
submodules (``syllabus_eval.backends.pool``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

# old name under syllabus_eval -> new name under syllabus_eval
MOVED = {
    "advantages": "query.advantages", "compiled": "query.compiled", "devices": "query.devices",
    "evaluator": "query.evaluator", "hook_forms": "query.hook_forms", "inputs": "query.inputs",
    "protocols": "query.protocols", "weights": "query.weights",
    "loggers": "results.loggers", "report": "results.report", "statistics": "results.statistics",
    "backends": "evaluation.backends", "checkpoints": "evaluation.checkpoints",
    "jobs": "evaluation.jobs", "normalization": "evaluation.normalization",
    "runner": "evaluation.runner", "schedule": "evaluation.schedule",
    "snapshot": "evaluation.snapshot", "tracking": "evaluation.tracking",
}


def new_name(name: str) -> str | None:
    """``syllabus_eval.backends.pool`` -> ``syllabus_eval.evaluation.backends.pool``."""
    package, _, rest = name.partition(".")
    if package != "syllabus_eval" or not rest:
        return None
    head, _, tail = rest.partition(".")
    if head not in MOVED:
        return None
    return ".".join(filter(None, ["syllabus_eval", MOVED[head], tail]))


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old name with the module already imported under its new one."""

    def find_spec(self, name: str, path: object = None, target: object = None):
        if new_name(name) is None:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(new_name(spec.name))

    def exec_module(self, module: ModuleType) -> None:
        """The module ran under its new name already."""


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())
