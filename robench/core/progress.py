"""Progress reporting that the engine can use without knowing about terminals.

The engine calls ``reporter.task(description, total)`` and ``advance()``; the CLI
passes a :class:`RichReporter` (bars on stderr), library users and tests may pass
nothing.
"""
from __future__ import annotations

from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Task(Protocol):
    def advance(self, n: int = 1, **fields: object) -> None: ...
    def done(self) -> None: ...


class Reporter(Protocol):
    def task(self, description: str, total: int) -> Task: ...


class _NullTask:
    def advance(self, n: int = 1, **fields: object) -> None:
        pass

    def done(self) -> None:
        pass


class NullReporter:
    def task(self, description: str, total: int) -> Task:
        return _NullTask()


class _RichTask:
    def __init__(self, progress: Progress, task_id: TaskID) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1, **fields: object) -> None:
        info = " ".join(f"{k}={v}" for k, v in fields.items())
        self._progress.update(self._id, advance=n, info=info)

    def done(self) -> None:
        self._progress.update(self._id, visible=True)
        self._progress.stop_task(self._id)


class RichReporter:
    """Rich progress bars on stderr; a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console or Console(stderr=True),
        )

    def __enter__(self) -> RichReporter:
        return self  # the display starts with the first task: an early error leaves no empty line

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.progress.live.is_started:
            self.progress.__exit__(exc_type, exc, tb)

    def task(self, description: str, total: int) -> Task:
        if not self.progress.live.is_started:
            self.progress.start()
        return _RichTask(self.progress, self.progress.add_task(description, total=total, info=""))
