"""Shared helpers: run the real ``robench`` CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m robench ARGS`` in a fresh process; COLUMNS wide so tables do not fold."""
    full_env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("ROBENCH_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "robench", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=str(REPO),
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder outside the repository, so tests never touch leaderboards/."""
    return tmp_path / "results"
