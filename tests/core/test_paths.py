"""Where results go: flag > $ROBENCH_RESULTS > ./robench-results in the working folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from robench.core.paths import data_root, results_root, runs_root, source_checkout


def test_order_of_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROBENCH_RESULTS", raising=False)
    monkeypatch.delenv("ROBENCH_RUNS", raising=False)
    assert source_checkout() == REPO  # an editable install, yet nothing goes into it
    assert results_root() == tmp_path / "robench-results"
    assert runs_root() == tmp_path / "robench-results" / "runs"
    monkeypatch.setenv("ROBENCH_RESULTS", str(tmp_path / "env"))
    monkeypatch.setenv("ROBENCH_RUNS", str(tmp_path / "env-runs"))
    assert results_root() == tmp_path / "env" and runs_root() == tmp_path / "env-runs"
    assert results_root(tmp_path / "flag") == tmp_path / "flag"
    assert runs_root(tmp_path / "flag-runs") == tmp_path / "flag-runs"


def _git_status() -> str:
    return subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored"],
                          capture_output=True, text=True, check=True).stdout


def test_a_run_writes_only_into_the_working_folder(tmp_path: Path) -> None:
    """A real `robench run` started in a fresh folder of an editable install: record, board
    and run folder under ./robench-results there, the checkout untouched, and
    `robench leaderboard` in that folder finds the run."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROBENCH_RESULTS", "ROBENCH_RUNS")}
    env["COLUMNS"] = "200"
    before = _git_status()
    run = subprocess.run([sys.executable, "-m", "robench", "run", "--epochs", "1", "--attack", "fgsm",
                          "--set", "eval.checks=false", "-q"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "robench-results"
    (record,) = out.glob("records/digits/*/*.json")
    run_id = json.loads(record.read_text())["run_id"]
    assert (out / "runs" / run_id / "best.pt").is_file()
    board_file = next(out.glob("digits-*.md"))
    assert "pgd-at" in board_file.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robench-results"]
    assert _git_status() == before
    board = subprocess.run([sys.executable, "-m", "robench", "leaderboard", "--data", "digits", "--by", "seed"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert board.returncode == 0, board.stderr
    assert "pgd-at" in board.stdout and "no records" not in board.stdout.lower()


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

    from robench.core.provenance import git_commit

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
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "board.md").write_text("a")  # a results folder in the checkout, committed
    subprocess.run([*git, "add", "results/board.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "y"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "results" / "board.md").write_text("b")  # rewritten by a run: the code is still the commit's
    assert git_commit(tmp_path, outputs=[tmp_path / "results", tmp_path.parent]) == head
    assert git_commit(tmp_path) == head + "+dirty"  # not named as an output: it counts
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path, outputs=[tmp_path / "results"]) == head + "+dirty"
