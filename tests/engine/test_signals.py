"""StopRequest: which repeated signals stop at once."""
from __future__ import annotations

import os
import signal

import pytest

from robench.engine.signals import StopRequest


def test_a_repeated_sigterm_is_one_request() -> None:
    """A scheduler signals every process and torchrun passes it on: two SIGTERMs, one stop."""
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.name == "SIGTERM"


def test_ctrl_c_twice_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_after_sigterm_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.name == "SIGTERM"
