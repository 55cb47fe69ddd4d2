"""A run's loggers: built with the plan, started before training, told the outcome.

A logger named wrongly (no such plugin) or given a bad option fails with the plan,
before any work, as every other plugin does. One that cannot load (its module raises
on import) or later fails is warned about and left out: watching a run never decides
whether it happens.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from robench.api.errors import PluginLoadError
from robench.api.loggers import Logger, RunStart, Status
from robench.core.config import LOGGER_KIND, LOGGER_SECTION, PluginChoice, config_hash
from robench.core.registry import get_registry
from robench.engine.checkpoint import Checkpoint
from robench.engine.loggers import LoggerFailedWarning, RunLoggers
from robench.engine.train import TrainingStopped


def create_loggers(choices: Sequence[PluginChoice]) -> list[tuple[str, Logger[Any]]]:
    """Each chosen logger with its registered name; a broken plugin is warned about and skipped."""
    registry = get_registry(LOGGER_KIND)
    made: list[tuple[str, Logger[Any]]] = []
    for choice in choices:
        try:
            logger = registry.create(choice.name, choice.params, where=f"{LOGGER_SECTION}.{choice.name}")
        except PluginLoadError as exc:
            warnings.warn(LoggerFailedWarning(f"{exc}; the run goes on without it"), stacklevel=2)
            continue
        name = registry.canonical_name(choice.name)
        if name not in (n for n, _ in made):
            made.append((name, logger))
    return made


def start_loggers(
    loggers: Sequence[tuple[str, Logger[Any]]], resolved: Mapping[str, Any], run_id: str, run_dir: Path,
    world_size: int, log_every: int, resume: Checkpoint | None,
) -> RunLoggers:
    """The started loggers of the process that records the run."""
    done = len((resume.train_state or {}).get("history", [])) if resume is not None else 0
    started = RunLoggers(loggers, log_every)
    started.start(RunStart(run_id, run_dir, resolved, config_hash(resolved, world_size),
                           resumed=resume is not None, first_epoch=done + 1))
    return started


def ending(exc: BaseException) -> Status:
    """How a run that raised ``exc`` ended, as loggers hear it."""
    return "stopped" if isinstance(exc, (TrainingStopped, KeyboardInterrupt)) else "failed"


@contextmanager
def finished_on_error(loggers: RunLoggers) -> Iterator[None]:
    """Close the loggers with the run's ending if the block raises (and raise on)."""
    try:
        yield
    except BaseException as exc:
        loggers.finish(ending(exc))
        raise


def result_metrics(checkpoints: Mapping[str, Mapping[str, Any]], selected: str) -> dict[str, float]:
    """``{"best/PGD-20": 55.0, ..., "selected/PGD-20": 55.0}``: every evaluated checkpoint's
    accuracies, and the reported one's again under ``selected`` (what the board ranks)."""
    results: dict[str, float] = {}
    for name, checkpoint in checkpoints.items():
        for attack, accuracy in (checkpoint.get("accuracy") or {}).items():
            results[f"{name}/{attack}"] = float(accuracy)
    for attack, accuracy in ((checkpoints.get(selected) or {}).get("accuracy") or {}).items():
        results[f"selected/{attack}"] = float(accuracy)
    return results


def log_outcome(loggers: RunLoggers, checkpoints: Mapping[str, Mapping[str, Any]], selected: str,
                files: Sequence[Path], record_path: Path) -> None:
    """The test results, the checkpoints that exist and the record, then a finished close."""
    if checkpoints:
        loggers.results(result_metrics(checkpoints, selected))
    for path in files:
        if path.is_file():
            loggers.artifact(path, "checkpoint")
    loggers.artifact(record_path, "record")
    loggers.finish("finished")


def configured_loggers(config: Mapping[str, Any], default: Sequence[Any]) -> list[Any]:
    """The loggers a stored config names; one from before loggers existed gets ``default``."""
    return list(config[LOGGER_SECTION]) if LOGGER_SECTION in config else list(default)
