"""``robench run --resume``: a run killed mid-training continues to the very same model.

Real subprocesses: one run goes through uninterrupted; an identical one is killed
with SIGKILL after its second epoch and resumed with ``--resume``. CPU training is
deterministic, so the two must end with bit-identical weights, logs and results.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import REPO, run_cli

ARGS = ["--epochs", "6", "--set", "defense.steps=3", "--attack", "pgd-5", "--n-eval", "100",
        "--set", "eval.checks=false", "-q"]


def _dirs(root: Path) -> tuple[Path, Path]:
    return root / "results", root / "runs"


def _only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def _kill_after_epochs(root: Path, epochs: int) -> Path:
    results, runs = _dirs(root)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "robench", "run", "--results-dir", str(results), "--runs-dir", str(runs), *ARGS],
        cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            logs = list(runs.glob("*/log.jsonl"))
            if logs and len(logs[0].read_text().splitlines()) >= epochs:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("no epoch finished in time")
    finally:
        proc.kill()
        proc.wait()
    return _only(list(runs.iterdir()))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _record(results: Path) -> dict:
    return json.loads(_only(list(results.rglob("records/**/*.json"))).read_text())


def test_killed_run_resumes_to_identical_results(tmp_path: Path) -> None:
    ref_results, ref_runs = _dirs(tmp_path / "ref")
    ref = run_cli("run", "--results-dir", str(ref_results), "--runs-dir", str(ref_runs), *ARGS)
    assert ref.returncode == 0, ref.stderr

    run_dir = _kill_after_epochs(tmp_path / "cut", 2)
    results, _ = _dirs(tmp_path / "cut")
    assert not list(results.rglob("records/**/*.json"))  # killed before it finished
    done = len((run_dir / "log.jsonl").read_text().splitlines())
    assert 2 <= done < 6

    best_only = run_cli("run", "--resume", str(run_dir / "best.pt"))
    assert best_only.returncode == 2 and "no training state" in best_only.stderr
    resumed = run_cli("run", "--resume", str(run_dir), "--results-dir", str(results), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {done} of 6" in resumed.stdout

    ref_dir = _only(list(ref_runs.iterdir()))
    for name in ("last.pt", "best.pt"):
        a, b = _weights(ref_dir / name), _weights(run_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rec, ref_rec = _record(results), _record(ref_results)
    assert rec["run_id"] == run_dir.name and rec["notes"] == [f"resumed after epoch {done}"]
    assert rec["checkpoints"] == ref_rec["checkpoints"]
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(rec["history"]) == strip(ref_rec["history"])
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4, 5, 6]

    again = run_cli("run", "--resume", str(run_dir), "--results-dir", str(results))
    assert again.returncode == 2 and "finished already" in again.stderr


def test_resume_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    missing = run_cli("run", "--resume", "no-such-run", "--runs-dir", str(tmp_path))
    assert missing.returncode == 2 and "no run found" in missing.stderr
    assert "Traceback" not in missing.stderr

    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    changed = run_cli("run", "--resume", str(run_dir), "--defense", "trades", "--epochs", "3")
    assert changed.returncode == 2 and "cannot change" in changed.stderr
    assert "defense" in changed.stderr and "train" in changed.stderr
