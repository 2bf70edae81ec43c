"""Whether spawning a worker process now would run the user's script again.

Usage::

    script = unguarded_main()   # None: spawning is safe (or cannot be told)
    if script is not None:
        ...                     # stay in this process, or refuse, naming the guard

A spawned process imports the main module before it runs anything (Python's ``multiprocessing``
with the ``"spawn"`` start method, as our process backend uses): a script whose training code
is not under ``if __name__ == "__main__":`` would train again in the worker, and fail when that
copy tries to spawn in turn. This module tells, before spawning, the way ``multiprocessing``
itself decides what a spawned process runs again (``multiprocessing.spawn``): nothing for an
interactive session, ``python -c`` or a package's ``__main__``; otherwise the main module,
whose source is read to see whether the code running now is under the guard.
"""

from __future__ import annotations

import ast
import os
import sys
from types import FrameType, ModuleType


def unguarded_main() -> str | None:
    """The main script's path when a process spawned now would run the code that is calling,
    or any training at all, again; ``None`` when it would not, or when that cannot be told.

    The calling thread's stack is read: its frame of the main module's top-level code says
    which top-level statement runs now, and that statement must be inside an
    ``if __name__ == "__main__":`` block. Called from another thread (no such frame), a
    script with no guard anywhere counts as unguarded.
    """
    main = sys.modules.get("__main__")
    path = _rerun_path(main)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
    except OSError:
        return path  # a spawned process would fail to run it again (python - < script.py)
    except (SyntaxError, ValueError):
        return None  # a source that does not parse as text: do not guess
    guards = [(node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno)
              for node in tree.body if isinstance(node, ast.If) and _is_main_test(node.test)]
    frame = _top_level_frame(main, sys._getframe(1))
    if frame is None:
        return None if guards else path
    line = frame.f_lineno
    return None if any(first <= line <= last for first, last in guards) else path


def _rerun_path(main: ModuleType | None) -> str | None:
    """The file a spawned process runs again as its main module (``None``: none)."""
    if main is None:
        return None
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None  # multiprocessing.spawn leaves a package's __main__ alone
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return None  # interactive sessions, notebooks, python -c
    if os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None  # as multiprocessing.spawn skips it
    return path


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [side.id for side in sides if isinstance(side, ast.Name)]
    constants = [side.value for side in sides if isinstance(side, ast.Constant)]
    return names == ["__name__"] and constants == ["__main__"]


def _top_level_frame(main: ModuleType, frame: FrameType | None) -> FrameType | None:
    """The outermost frame of ``main``'s top-level code on this stack."""
    found = None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            found = frame
        frame = frame.f_back
    return found
