"""Sweep points as Slurm jobs through submitit (``pip install robench[slurm]``).

One job per point, each running :func:`robench.workflows.sweep.point.run_point`, the very
function of the local runner. A job that hits its time limit is requeued by submitit
(:class:`PointJob` is checkpointable), and the requeued job resumes the run from its
``last.pt``. ``cluster="local"`` is submitit's local executor: real job processes on
this machine, the way to try a sweep's Slurm path without a cluster.
"""
from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robench.api.errors import UserError
from robench.workflows.sweep.plan import SweepPoint
from robench.workflows.sweep.point import UNRECORDED, PointResult, run_point

CLUSTERS = ("slurm", "local")
#: seconds a run gets, after the job's time-limit signal, to save its checkpoint
STOP_GRACE_S = 60  # submitit signals 90 s before the limit


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm runner needs submitit: pip install 'robench[slurm]'") from None
    return submitit


class PointJob:
    """The callable a job runs; failure raises, so that submitit reports the job as failed."""

    def __init__(self, point: SweepPoint) -> None:
        self.point = point
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"point": self.point, "_proc": None}

    def _started(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def __call__(self) -> PointResult:
        result = run_point(self.point, started=self._started)
        if result.status in UNRECORDED:
            raise RuntimeError(f"robench run exited with {result.exit_code}: {result.reason} (log: {result.log})")
        return result

    def checkpoint(self) -> Any:
        """On a time limit or preemption: the run saves a checkpoint, and the same point is
        requeued; it resumes from that last.pt."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        return _submitit().helpers.DelayedSubmission(PointJob(self.point))


@dataclass
class SlurmOptions:
    cluster: str = "slurm"
    #: GPUs (one process each) per job: ``robench run --nproc``
    gpus: int = 0
    cpus_per_task: int | None = None
    timeout_min: int = 24 * 60
    partition: str | None = None
    #: further ``#SBATCH`` options, without the dashes: {"account": "abc", "qos": "high"}
    extra: Mapping[str, str] = field(default_factory=dict)


def make_executor(folder: Path, name: str, options: SlurmOptions) -> Any:
    """submitit's executor for ``options``: job files and logs go to ``folder/<job id>``."""
    submitit = _submitit()
    if options.cluster not in CLUSTERS:
        raise UserError(f"unknown cluster {options.cluster!r}; use {' or '.join(CLUSTERS)}")
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=options.cluster)
    except RuntimeError as exc:  # no srun here: not a Slurm machine
        raise UserError(f"--runner slurm: {exc} (use --runner local, or submitit-local to try the job path here)") from None
    params: dict[str, Any] = {
        "name": f"robench-{name}", "timeout_min": options.timeout_min, "tasks_per_node": 1, "nodes": 1,
        "cpus_per_task": options.cpus_per_task, "slurm_partition": options.partition,
    }
    if options.gpus:
        params["gpus_per_node"] = options.gpus
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    executor.update_parameters(**params)
    return executor


def submit(points: Sequence[SweepPoint], folder: Path, name: str, options: SlurmOptions) -> list[Any]:
    """Submit one job per point (as one job array); returns submitit's job handles."""
    executor = make_executor(folder, name, options)
    with executor.batch():
        jobs = [executor.submit(PointJob(point)) for point in points]
    return jobs


def wait(jobs: Sequence[Any], points: Sequence[SweepPoint], done: Any) -> list[PointResult]:
    """Wait for every job; a job that failed or died becomes a failed result."""
    results = []
    for job, point in zip(jobs, points):
        try:
            result = job.result()
        except Exception as exc:  # submitit re-raises the job's error with its traceback: keep one line
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            result = PointResult(point.key, "failed", 1, reason=lines[-1] if lines else type(exc).__name__,
                                 log=Path(job.paths.stdout))
        done(point, result)
        results.append(result)
    return results
