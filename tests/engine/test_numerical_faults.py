"""A NaN/inf training loss stops the run: epoch and step named, last good checkpoint kept, no record."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from conftest import run_cli


def test_diverging_run_stops_naming_epoch_and_step(tmp_path: Path) -> None:
    results, runs = tmp_path / "results", tmp_path / "runs"
    # epoch 1 trains normally; from epoch 2 the learning rate is 1e12 and the loss blows up
    out = run_cli("run", "--epochs", "3", "--set", "defense.steps=2", "--set", "train.schedule=piecewise",
                  "--set", "train.milestones=[1]", "--set", "train.gamma=1e13", "--attack", "fgsm",
                  "--results-dir", str(results), "--runs-dir", str(runs), "-q")
    assert out.returncode == 3, out.stderr  # diverged: its own exit code
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    message = lines[0]
    assert "loss became NaN or inf in epoch 2, step " in message and " of 20" in message, message
    assert "last good checkpoint" in message and "(the end of epoch 1)" in message, message

    assert not list(results.rglob("records/**/*.json"))  # no record with garbage accuracies
    (run_dir,) = runs.iterdir()
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and not last["train_state"]["partial"]
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert all(math.isfinite(h["loss"]) for h in last["train_state"]["history"])
    # the kept checkpoint is a real starting point: a resume begins from epoch 1 (and diverges again)
    again = run_cli("run", "--resume", str(run_dir), "--results-dir", str(results), "-q")
    assert again.returncode == 3 and "epoch 2" in again.stderr
