"""RunLoggers: a logger that raises is warned about once and left out; the others go on."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import pytest

from robench.api import EpochLog, Logger, RunStart
from robench.engine.loggers import LoggerFailedWarning, RunLoggers

START = RunStart("run-1", Path("."), {"train": {"lr": 0.1}}, "abc")
EPOCH = EpochLog(1, {"loss": 1.0}, ({"epoch": 1, "loss": 1.0},), 1)


class Notebook(Logger):
    """Writes down what it hears; raises in ``fail_in`` (every time)."""

    def __init__(self, fail_in: str = "") -> None:
        super().__init__()
        self.heard: list[str] = []
        self.fail_in = fail_in

    def _hear(self, what: str) -> None:
        self.heard.append(what)
        if what == self.fail_in:
            raise OSError(28, "No space left on device")

    def start(self, run: RunStart) -> None:
        self._hear("start")

    def log_epoch(self, epoch: EpochLog) -> None:
        self._hear("epoch")

    def finish(self, status: str) -> None:
        self._hear(f"finish {status}")


class StepTaker(Notebook):
    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self._hear(f"step {step}")


def test_a_failing_logger_is_warned_about_once_and_dropped() -> None:
    good, bad = Notebook(), Notebook(fail_in="epoch")
    loggers = RunLoggers([("good", good), ("bad", bad)])
    with pytest.warns(LoggerFailedWarning, match=r"logger 'bad' failed in log_epoch: .*No space left") as caught:
        loggers.start(START)
        loggers.epoch(EPOCH)
        loggers.epoch(EPOCH)
        loggers.finish("finished")
    assert len(caught) == 1
    assert good.heard == ["start", "epoch", "epoch", "finish finished"]
    assert bad.heard == ["start", "epoch"]  # nothing after its failure, not even finish


def test_finish_closes_once() -> None:
    one = Notebook()
    loggers = RunLoggers([("one", one)])
    loggers.finish("failed")
    loggers.finish("finished")
    assert one.heard == ["finish failed"] and loggers.names == []


def test_steps_are_read_only_for_a_logger_that_takes_them() -> None:
    assert not RunLoggers([("n", Notebook())], log_every=5).step_due(5)  # log_step not overridden
    takes = RunLoggers([("s", StepTaker())], log_every=5)
    assert [s for s in range(1, 16) if takes.step_due(s)] == [5, 10, 15]
    assert not RunLoggers([("s", StepTaker())], log_every=0).step_due(5)
    dropped = RunLoggers([("s", StepTaker(fail_in="start"))], log_every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoggerFailedWarning)
        dropped.start(START)
    assert not dropped.step_due(5)  # the only step taker failed: no more waiting on the device
