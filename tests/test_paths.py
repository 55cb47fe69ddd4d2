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
