"""``robench sweep --budget MINUTES``: start no run that the time left cannot finish.

A run's duration is estimated from the records already in its board's folder, made on
the same kind of machine: the longest wall time of the same experiment (any seed), or
else of the same defense, architecture and dataset with the same data settings and
epochs, or else of the same defense, architecture and dataset. A run with no such record starts
while any time is left, since nothing says it cannot finish. When the budget is spent,
the runs still going are stopped as by SIGTERM: they save ``last.pt``, and the next
``robench sweep`` resumes them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from robench.results.records import RunRecord, load_records
from robench.workflows.sweep.plan import SweepPoint, machine, run_shape


def estimate_seconds(point: SweepPoint) -> float | None:
    """The longest recorded wall time of this experiment, or of its kind, on this machine."""
    records, _ = load_records(point.record_dir)
    here = [r for r in records if machine(r.device) == point.machine]
    same = [r.wall_time_s for r in here if r.config_hash == point.config_hash]
    if not same:
        kind = [r for r in here if _kind(r) == point.kind]
        same = [r.wall_time_s for r in kind if run_shape(r.config.get("data"), r.train.get("epochs")) == point.shape]
        same = same or [r.wall_time_s for r in kind]
    return max(same, default=None)


def _kind(record: RunRecord) -> tuple[str, str, str]:
    return str(record.defense.get("name")), str(record.arch.get("name")), record.dataset


@dataclass
class Budget:
    """A deadline on the monotonic clock."""

    seconds: float
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.started or time.monotonic()

    @property
    def left(self) -> float:
        return self.started + self.seconds - time.monotonic()

    @property
    def spent(self) -> bool:
        return self.left <= 0

    def refusal(self, point: SweepPoint) -> str | None:
        """Why ``point`` must not start now, or None when it may."""
        if self.spent:
            return "the budget is spent"
        needed = estimate_seconds(point)
        if needed is not None and needed > self.left:
            return f"needs about {_duration(needed)} by its records here, {_duration(self.left)} left"
        return None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
