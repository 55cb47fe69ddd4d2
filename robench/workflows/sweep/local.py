"""The local runner: sweep points in parallel ``robench run`` processes on this machine.

Every worker slot gets its share of the machine: with several jobs, each gets
``cpus / jobs`` threads and, when there are enough GPUs, its own ``--nproc`` of them
(``CUDA_VISIBLE_DEVICES``), unless the user set those variables. A stop signal stops
starting points and forwards one SIGTERM to the running ones, which save a
checkpoint at the next step and exit; the next ``robench sweep`` resumes them. A
:class:`~robench.workflows.sweep.budget.Budget` does the same when its time is spent, and
starts no point whose records say it cannot finish in the time left.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import FrameType

from robench.workflows.sweep.budget import Budget
from robench.workflows.sweep.plan import SweepPoint
from robench.workflows.sweep.point import PointResult, run_point


def slot_env(slot: int, jobs: int, gpus_each: int, gpus: int, cpus: int,
             base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``slot`` out of ``jobs``."""
    env = dict(os.environ if base is None else base)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // jobs)))
        if gpus >= jobs * gpus_each and "CUDA_VISIBLE_DEVICES" not in env:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * gpus_each + i) for i in range(gpus_each))
    return env


class LocalRunner:
    """Runs points with at most ``jobs`` at a time; ``done`` hears of each result as it lands."""

    def __init__(self, jobs: int = 1, gpus_each: int = 1, budget: Budget | None = None) -> None:
        import torch

        self.jobs, self.gpus_each, self.budget = jobs, gpus_each, budget
        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.stop_signal: int | None = None
        #: the budget ran out while points were running (they were stopped)
        self.out_of_time = False
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def _started(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.add(proc)
            stop = self.stop_signal is not None or self.out_of_time
        if stop:
            proc.send_signal(signal.SIGTERM)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """Start nothing more; each signal goes on to the runs (a second one stops them at once)."""
        self.stop_signal = self.stop_signal or signum
        self._terminate_live()

    def _terminate_live(self) -> None:
        with self._lock:
            for proc in self._live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _work(self, point: SweepPoint, slots: queue.Queue[int]) -> PointResult:
        slot = slots.get()
        try:
            if self.stop_signal is not None:
                return PointResult(point.key, "not started")
            refusal = self.budget.refusal(point) if self.budget is not None else None
            if refusal is not None:
                return PointResult(point.key, "not started", reason=refusal)
            env = slot_env(slot, self.jobs, self.gpus_each, self.gpus, self.cpus)
            return run_point(point, env, self._started)
        finally:
            slots.put(slot)

    def run(self, points: Sequence[SweepPoint], done: Callable[[SweepPoint, PointResult], None]) -> list[PointResult]:
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.jobs):
            slots.put(slot)
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="sweep") as pool:
                futures: dict[Future[PointResult], SweepPoint] = {pool.submit(self._work, p, slots): p for p in points}
                pending = set(futures)
                while pending:  # short waits: signal handlers run on this thread between them
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    if self.budget is not None and self.budget.spent and not self.out_of_time:
                        self.out_of_time = True  # the running ones save last.pt and stop
                        self._terminate_live()
                    for future in finished:
                        done(futures[future], future.result())
                return [f.result() for f in futures]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
