"""Where results and data live; never relative to the current working directory.

Results (records and leaderboards): ``--results-dir`` / ``results_dir`` in the config,
then ``$ROBENCH_RESULTS``, then the ``leaderboards/`` folder of the source checkout
robench runs from (an editable install, as in the README), else
``$XDG_DATA_HOME/robench`` (default ``~/.local/share/robench``).

Run artifacts (checkpoints, evaluation reports and state): ``--runs-dir`` / ``runs_dir``,
then ``$ROBENCH_RUNS``, then ``runs/`` in the source checkout (git-ignored), else
``$XDG_DATA_HOME/robench/runs``.
"""
from __future__ import annotations

import os
from pathlib import Path

import robench


def source_checkout() -> Path | None:
    """The repository root when robench runs from a source checkout, else None."""
    root = Path(robench.__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "robench"' in pyproject else None


def results_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("ROBENCH_RESULTS")
    if env:
        return Path(env).expanduser().resolve()
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "leaderboards"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "robench"


def runs_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("ROBENCH_RUNS")
    if env:
        return Path(env).expanduser().resolve()
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "runs"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "robench" / "runs"


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset files live: ``--data-root``, else ``$ROBENCH_DATA``, else
    ``$XDG_CACHE_HOME/robench/data`` (default ``~/.cache/robench/data``)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("ROBENCH_DATA")
    if env:
        return Path(env).expanduser().resolve()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "robench" / "data"
