"""Running one sweep point, the same way in a local worker and in a Slurm job.

The point's folder holds its run folders, its log and a lock. Whoever holds the lock
runs the point, and the ``robench run`` process inherits the lock, so a point never
trains twice at once: not from two sweeps, not from a requeued job beside a running
one, not after the sweep that started it was killed. Before running, the point looks
again for its record (it may have landed meanwhile) and for a ``last.pt`` to resume.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.engine.train import LAST, PREVIOUS, NonFiniteLoss
from robench.results.records import load_records
from robench.workflows.sweep.plan import SweepPoint

LOCK = ".lock"
LOG = "log.txt"
#: exit codes of a run stopped by SIGINT/SIGTERM: after saving a checkpoint (130, 143), or
#: outside training (before it, or while evaluating: the evaluation's own state resumes)
STOPPED = (130, 143, -2, -15)
#: the statuses of a run that ended without its record
UNRECORDED = ("failed", "stopped", "diverged")


@dataclass(frozen=True)
class PointResult:
    key: str
    #: recorded (before), busy (running elsewhere), done, resumed, stopped, diverged (its
    #: training loss became NaN or inf), failed
    status: str
    exit_code: int = 0
    #: accuracies of the record, once there is one
    accuracy: Mapping[str, float] | None = None
    #: the run's last line of output when it failed
    reason: str = ""
    log: Path | None = None


def find_record(point: SweepPoint) -> dict[str, Any] | None:
    """The point's record (its accuracies and run id), if one exists."""
    records, _ = load_records(point.record_dir)
    for record in records:
        if (record.config_hash, record.seed) == (point.config_hash, point.seed):
            return {"accuracy": record.accuracy, "run_id": record.run_id}
    return None


def unfinished_run(folder: Path) -> Path | None:
    """The newest run folder of this point that has a checkpoint to resume from."""
    runs = [d for d in folder.iterdir() if d.is_dir() and ((d / LAST).is_file() or (d / PREVIOUS).is_file())] \
        if folder.is_dir() else []
    return max(runs, key=lambda d: max((d / n).stat().st_mtime for n in (LAST, PREVIOUS) if (d / n).is_file()),
               default=None)


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or None if another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 4096))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_point(
    point: SweepPoint,
    env: Mapping[str, str] | None = None,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> PointResult:
    """Run ``point`` to its record in a ``robench run`` process (resuming it if it was cut short).

    ``started`` receives the process, so that a runner can forward a stop signal to it.
    """
    if (found := find_record(point)) is not None:
        return PointResult(point.key, "recorded", accuracy=found["accuracy"])
    point.folder.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(point.folder / LOCK)
    if fd is None:
        return PointResult(point.key, "busy")
    try:
        if (found := find_record(point)) is not None:  # it landed while we waited for the lock
            return PointResult(point.key, "recorded", accuracy=found["accuracy"])
        resume = unfinished_run(point.folder)
        argv = point.argv(resume)
        log = point.folder / LOG
        with open(log, "ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"\n=== {stamp} robench {json.dumps(argv)}\n".encode())
            out.flush()
            # its own session: a Ctrl-C at the terminal reaches the sweep, which forwards one
            # SIGTERM; the run inherits the lock and holds it until it exits
            proc = subprocess.Popen([sys.executable, "-m", "robench", *argv], stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(env) if env is not None else None, pass_fds=(fd,), start_new_session=True)
            if started is not None:
                started(proc)
            code = proc.wait()
    finally:
        os.close(fd)
    found = find_record(point)
    if code == 0 or found is not None:  # a stop may arrive after the record was written
        return PointResult(point.key, "resumed" if resume else "done", accuracy=(found or {}).get("accuracy"), log=log)
    status = "stopped" if code in STOPPED else "diverged" if code == NonFiniteLoss.exit_code else "failed"
    return PointResult(point.key, status, code, reason=_last_line(log), log=log)
