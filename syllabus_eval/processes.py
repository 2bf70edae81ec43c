"""Worker processes that must end: the evaluation backends' and the hosted curricula's.

Usage::

    from syllabus_eval.processes import stop_process

    stop_process(worker)   # SIGTERM, then SIGKILL: gone within a few seconds
"""

from __future__ import annotations

from multiprocessing.process import BaseProcess


def stop_process(process: BaseProcess, wait: float = 2.0) -> None:
    """End ``process``: SIGTERM, then SIGKILL if it outlives ``wait`` seconds (a worker stuck
    in an env step or a lock ignores the first), each followed by a join."""
    if process.is_alive():
        process.terminate()
        process.join(wait)
    if process.is_alive():
        process.kill()
        process.join(wait)
