"""The logger contract: where a run's progress and results go besides its own files.

A logger is the fifth plugin kind (entry-point group ``robench.loggers``). robench
calls it from the process that records the run (rank 0 under torchrun), in this order::

    start(RunStart)                    once, before the first step (also on resume)
    log_step(step, metrics)            every ``engine.log_every`` steps, if overridden
    log_epoch(EpochLog)                after each epoch's validation and checkpoints
    log_results(results)               the test-set accuracies, once the record is written
    log_artifact(path, kind)           the checkpoints and the record
    finish(status)                     always, also when the run fails or is stopped

Every method but ``start`` does nothing by default, so a logger overrides only what
its tool takes. A logger must never decide the run's fate: robench catches whatever
one raises, warns once and goes on without it, so a tool that is missing, offline or
out of disk space costs that tool's log and nothing else.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from robench.api.contracts import P, Plugin

#: how a run ended, as :meth:`Logger.finish` hears it
Status = Literal["finished", "failed", "stopped"]
#: what :meth:`Logger.log_artifact` is handed
ArtifactKind = Literal["checkpoint", "record"]


@dataclass(frozen=True)
class RunStart:
    """What a logger knows about the run it follows."""

    run_id: str
    #: the run's folder (checkpoints, epoch log); a logger may write beside them
    run_dir: Path
    #: the resolved configuration, the hyperparameters of every section
    config: Mapping[str, Any]
    #: the experiment's hash: runs that differ only in seed share it
    config_hash: str
    #: true when the run continues from a ``last.pt``: the epochs before ``first_epoch``
    #: were logged by the earlier process
    resumed: bool = False
    first_epoch: int = 1


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch, with every epoch before it (a file log can be rewritten whole)."""

    epoch: int
    #: lr, loss, accuracy, val_clean, val_pgd (None without a validation split), seconds;
    #: the training eps is in ``history``
    metrics: Mapping[str, float | None]
    #: every epoch so far, this one last, as the record's ``history`` holds them
    history: tuple[Mapping[str, Any], ...]
    #: the epoch of the best checkpoint so far (None without a validation split)
    best_epoch: int | None


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``: the flat key-value form most
    trackers take. Lists and None become their JSON text, so nothing is dropped."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class Logger(Plugin[P]):
    """Base class of loggers; ``Params`` holds the tool's options (``loggers: [{name: ..., key: value}]``)."""

    def start(self, run: RunStart) -> None:
        """Open the tool's run; hyperparameters go here. Raise if the tool is unusable."""
        raise NotImplementedError

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """The training loss and learning rate at global step ``step`` (counted from 1).

        Only loggers that override this get steps: reading a loss waits for the GPU,
        so robench does so only when some logger wants it."""

    def log_epoch(self, epoch: EpochLog) -> None:
        """An epoch's metrics."""

    def log_results(self, results: Mapping[str, float]) -> None:
        """Test-set accuracies in percent: ``<checkpoint>/<clean or attack>``, e.g. ``best/apgd-t``."""

    def log_artifact(self, path: Path, kind: ArtifactKind) -> None:
        """A file worth keeping with the run (``best.pt``, ``last.pt``, the record's JSON)."""

    def finish(self, status: Status) -> None:
        """Close the tool's run."""
