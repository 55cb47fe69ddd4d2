"""Where results go: flag > $ROBENCH_RESULTS > the checkout's leaderboards/ (never the CWD)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from robench.paths import data_root, results_root, source_checkout


def test_order_of_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    monkeypatch.delenv("ROBENCH_RESULTS", raising=False)
    assert source_checkout() == REPO
    assert results_root() == REPO / "leaderboards"
    monkeypatch.setenv("ROBENCH_RESULTS", str(tmp_path / "env"))
    assert results_root() == tmp_path / "env"
    assert results_root(tmp_path / "flag") == tmp_path / "flag"


def test_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "robench" / "data"
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"


def test_commit_comes_from_git_or_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the source without .git (as on a GPU machine) records $ROBENCH_COMMIT."""
    import subprocess

    from robench.run import git_commit

    monkeypatch.setenv("ROBENCH_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
    monkeypatch.delenv("ROBENCH_COMMIT")
    assert git_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setenv("ROBENCH_COMMIT", "ignored-where-git-knows")
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == head + "+dirty"
