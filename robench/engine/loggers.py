"""A run's loggers behind one object that never lets one of them stop the run.

Each logger call runs in its own error handling, as each plugin load does: the first
exception a logger raises (its tool not installed, the network down, a full disk) is
warned about once, naming the logger and the call, and that logger gets nothing more
from this run. The run, its checkpoints and its record go on as without it.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robench.api.errors import one_line
from robench.api.loggers import ArtifactKind, EpochLog, Logger, RunStart, Status


class LoggerFailedWarning(UserWarning):
    """A logger raised; the run goes on without it."""


class RunLoggers:
    """The loggers of one run, called together; empty on every rank but the one that records."""

    def __init__(self, loggers: Sequence[tuple[str, Logger[Any]]] = (), log_every: int = 0) -> None:
        self._active = list(loggers)
        self.log_every = log_every

    @property
    def wants_steps(self) -> bool:
        """Whether any working logger takes per-step losses (reading one waits for the device)."""
        return self.log_every > 0 and any(type(logger).log_step is not Logger.log_step for _, logger in self._active)

    @property
    def names(self) -> list[str]:
        """The loggers still working."""
        return [name for name, _ in self._active]

    def step_due(self, step: int) -> bool:
        """Whether global step ``step`` (from 1) is one whose loss is sent."""
        # the modulo first: this runs every training step, the scan of the loggers only on due ones
        return self.log_every > 0 and step % self.log_every == 0 and self.wants_steps

    def _call(self, method: str, *args: Any) -> None:
        for name, logger in list(self._active):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a logger never stops a run
                self._active.remove((name, logger))
                warnings.warn(LoggerFailedWarning(
                    f"logger {name!r} failed in {method}: {one_line(exc) or type(exc).__name__}; "
                    "the run goes on without it"
                ), stacklevel=2)

    def start(self, run: RunStart) -> None:
        self._call("start", run)

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        self._call("log_step", step, metrics)

    def epoch(self, epoch: EpochLog) -> None:
        self._call("log_epoch", epoch)

    def results(self, results: Mapping[str, float]) -> None:
        self._call("log_results", results)

    def artifact(self, path: Path, kind: ArtifactKind) -> None:
        self._call("log_artifact", path, kind)

    def finish(self, status: Status) -> None:
        """Close every logger; the set is empty afterwards, so a second finish does nothing."""
        self._call("finish", status)
        self._active.clear()
