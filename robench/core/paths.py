"""Where results and data live.

Everything a run writes goes by default under one folder in the working folder, as
Lightning's ``lightning_logs/`` and Hydra's ``outputs/`` do: ``./robench-results/``.

Results (records and leaderboards): ``--results-dir`` / ``results_dir`` in the config,
then ``$ROBENCH_RESULTS``, then ``./robench-results``. This repository's committed
boards are written by pointing at its ``leaderboards/`` folder explicitly.

Run artifacts (checkpoints, evaluation reports and state): ``--runs-dir`` / ``runs_dir``,
then ``$ROBENCH_RUNS``, then ``./robench-results/runs``.

Nothing is written inside the installed package or its source checkout unless a path
points there. Defaults are made absolute when they are resolved, so that processes
started elsewhere (sweep jobs) get the folder the user was in.

Datasets are searched for (:func:`data_places`): ``--data-root``, ``$ROBENCH_DATA``,
robench's cache, then folders where the operating system installs a dataset.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import robench
from robench.api.data import data_cache


def source_checkout() -> Path | None:
    """The repository root when robench runs from a source checkout, else None."""
    root = Path(robench.__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "robench"' in pyproject else None


#: the folder, in the working folder, that everything a run writes goes under by default
RESULTS_FOLDER = "robench-results"


def results_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where records and leaderboards go: the flag, ``$ROBENCH_RESULTS``, ``./robench-results``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("ROBENCH_RESULTS")
    if env:
        return Path(env).expanduser().resolve()
    return Path.cwd() / RESULTS_FOLDER


def runs_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where run folders go: the flag, ``$ROBENCH_RUNS``, ``./robench-results/runs``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("ROBENCH_RUNS")
    if env:
        return Path(env).expanduser().resolve()
    return Path.cwd() / RESULTS_FOLDER / "runs"


@dataclass(frozen=True)
class DataPlace:
    """One folder of the data search order, and why it is searched."""

    path: Path
    origin: str  # "--data-root", "$ROBENCH_DATA", "cache" or "system"

    def __str__(self) -> str:
        return f"{self.path} ({self.origin})"


def data_places(
    explicit: str | os.PathLike[str] | None = None, system_folders: Sequence[str] = ()
) -> list[DataPlace]:
    """Where robench looks for a dataset, in order: ``--data-root``, ``$ROBENCH_DATA``,
    robench's cache (:func:`robench.api.data.data_cache`), then the dataset's
    ``system_folders``. A folder named twice is searched once."""
    places: list[DataPlace] = []
    if explicit:
        places.append(DataPlace(Path(explicit).expanduser().resolve(), "--data-root"))
    env = os.environ.get("ROBENCH_DATA")
    if env:
        places.append(DataPlace(Path(env).expanduser().resolve(), "$ROBENCH_DATA"))
    places.append(DataPlace(data_cache(), "cache"))
    places.extend(DataPlace(Path(folder), "system") for folder in system_folders)
    unique: dict[Path, DataPlace] = {}
    for place in places:
        unique.setdefault(place.path, place)
    return list(unique.values())


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where downloads go: the first of ``--data-root``, ``$ROBENCH_DATA`` and the cache."""
    return data_places(explicit)[0].path
