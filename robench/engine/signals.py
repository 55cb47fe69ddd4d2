"""SIGINT and SIGTERM as a request to stop at the next step boundary.

Preemption (SIGTERM from a scheduler) and Ctrl-C should cost at most the step in
progress: the training loop reads the flag between steps, saves a checkpoint that
can finish the epoch exactly, and stops. A second SIGINT (Ctrl-C twice) stops at once;
a repeated SIGTERM changes nothing, as schedulers and torchrun may both send one.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch

from robench.engine.distributed import World, all_reduce_sum

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, SIGINT/SIGTERM set :attr:`signum` instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers live on the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Ctrl-C twice: stop now, without the checkpoint. A repeated SIGTERM is the same
        # request arriving twice (a scheduler signals every process, torchrun passes it on)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def agreed(self, world: World, device: torch.device) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not world.active:
            return self.signum is not None
        flag = torch.tensor(int(self.signum is not None), device=device)
        all_reduce_sum(flag)
        stop = bool(flag.item())
        if stop and self.signum is None:
            self.signum = signal.SIGTERM
        return stop
