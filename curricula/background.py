"""A background thread that keeps its failure for the caller, shared by the curricula."""

from __future__ import annotations

import threading
from collections.abc import Callable

from syllabus_eval.errors import CurriculumError

POLL_S = 0.05  # how often a blocked wait re-checks whether it should go on


class BackgroundThread:
    """A daemon thread running ``target()``; an exception it raises is kept for the caller.

    Callers see the failure through :meth:`check`, which raises
    :class:`~syllabus_eval.CurriculumError` chained to the original exception (its traceback
    intact), every time it is called.
    :meth:`join` raises it too, unless :meth:`check` already reported it.
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._target = target
        self._reported = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            self._target()
        except BaseException as error:  # kept for the caller: never swallowed
            self.error = error

    def check(self) -> None:
        """Raise the thread's failure, if it failed."""
        if self.error is not None:
            self._reported = True
            raise CurriculumError(f"{self.name} failed: {self.error!r}") from self.error

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end; raise its failure if nobody was told of it yet."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.name} did not stop within {timeout} s")
        if not self._reported:
            self.check()
