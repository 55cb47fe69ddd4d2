"""``robench run --resume``: a run killed or stopped mid-training continues to the very same model.

Real subprocesses: one run goes through uninterrupted; identical ones are killed with
SIGKILL, or stopped with SIGTERM/SIGINT, in the middle of an epoch, or have their
last.pt torn, and are resumed with ``--resume``. CPU training is deterministic, so all
must end with bit-identical weights, logs and results.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

ARGS = ["--epochs", "6", "--set", "defense.steps=3", "--attack", "pgd-5", "--n-eval", "100",
        "--set", "eval.checks=false", "-q"]


def _dirs(root: Path) -> tuple[Path, Path]:
    return root / "results", root / "runs"


def _only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _record(results: Path) -> dict:
    return json.loads(_only(list(results.rglob("records/**/*.json"))).read_text())


def _start(root: Path) -> subprocess.Popen:
    results, runs = _dirs(root)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "robench", "run", "--results-dir", str(results), "--runs-dir", str(runs), *ARGS],
        cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _epochs_logged(runs: Path) -> list[dict]:
    logs = list(runs.glob("*/log.jsonl"))
    return [json.loads(line) for line in logs[0].read_text().splitlines()] if logs else []


def _signal_mid_epoch(root: Path, sig: int, after_epochs: int = 2) -> tuple[subprocess.Popen, int]:
    """Start a run; once ``after_epochs`` epochs are logged, wait about a third of an
    epoch and send ``sig``. Returns the process (ended) and the epochs logged before the signal."""
    _, runs = _dirs(root)
    proc = _start(root)
    deadline = time.monotonic() + 300
    try:
        while len(_epochs_logged(runs)) < after_epochs:
            assert proc.poll() is None, "the run ended before the signal"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        logged = _epochs_logged(runs)
        time.sleep(logged[-1]["seconds"] / 3)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, len(logged)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The same run left alone: its record and run folder."""
    results, runs = _dirs(tmp_path_factory.mktemp("reference"))
    ref = run_cli("run", "--results-dir", str(results), "--runs-dir", str(runs), *ARGS)
    assert ref.returncode == 0, ref.stderr
    return _record(results), _only(list(runs.iterdir()))


def _assert_same_as_reference(reference: tuple[dict, Path], results: Path, run_dir: Path) -> dict:
    ref_rec, ref_dir = reference
    for name in ("last.pt", "best.pt"):
        a, b = _weights(ref_dir / name), _weights(run_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rec = _record(results)
    assert rec["run_id"] == run_dir.name
    assert rec["checkpoints"] == ref_rec["checkpoints"] and rec["accuracy"] == ref_rec["accuracy"]
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(rec["history"]) == strip(ref_rec["history"])
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4, 5, 6]
    return rec


def test_sigkill_mid_epoch_resumes_to_identical_results(tmp_path: Path, reference: tuple[dict, Path]) -> None:
    proc, done = _signal_mid_epoch(tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    results, runs = _dirs(tmp_path)
    run_dir = _only(list(runs.iterdir()))
    assert not list(results.rglob("records/**/*.json"))  # killed before it finished
    assert len(_epochs_logged(runs)) == done < 6  # in the middle of the next epoch, not after it

    best_only = run_cli("run", "--resume", str(run_dir / "best.pt"))
    assert best_only.returncode == 2 and "no training state" in best_only.stderr
    resumed = run_cli("run", "--resume", str(run_dir), "--results-dir", str(results), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing after epoch {done} (6 epochs in all)" in resumed.stdout
    rec = _assert_same_as_reference(reference, results, run_dir)
    assert rec["notes"] == [f"resumed after epoch {done}"]

    again = run_cli("run", "--resume", str(run_dir), "--results-dir", str(results))
    assert again.returncode == 2 and "finished already" in again.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_at_a_step_boundary_and_resumes_exactly(
    tmp_path: Path, reference: tuple[dict, Path], sig: int
) -> None:
    """SIGTERM (preemption) or SIGINT (Ctrl-C) mid-epoch: the step in progress finishes,
    last.pt holds the epoch so far, and --resume ends exactly where the unstopped run did."""
    proc, done = _signal_mid_epoch(tmp_path, sig)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 128 + sig, stderr
    name = signal.Signals(sig).name
    assert f"stopped by {name} after step" in stderr and f"in epoch {done + 1}" in stderr, stderr
    assert "continue with: robench run --resume" in stderr and "Traceback" not in stderr
    results, runs = _dirs(tmp_path)
    run_dir = _only(list(runs.iterdir()))
    state = torch.load(run_dir / "last.pt", weights_only=True)["train_state"]
    partial = state["partial"]
    assert partial["epoch"] == done + 1 and 0 < partial["steps_done"] < 20  # 1257 images / 64 = 20 steps

    resumed = run_cli("run", "--resume", run_dir.name, "--runs-dir", str(runs), "--results-dir", str(results), "-q")
    assert resumed.returncode == 0, resumed.stderr
    point = f"epoch {done} and step {partial['steps_done']} of epoch {done + 1}"
    assert f"continuing after {point}" in resumed.stdout
    rec = _assert_same_as_reference(reference, results, run_dir)
    assert rec["notes"] == [f"resumed after {point}"]


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, reference: tuple[dict, Path]
) -> None:
    proc, done = _signal_mid_epoch(tmp_path, signal.SIGKILL, after_epochs=3)
    results, runs = _dirs(tmp_path)
    run_dir = _only(list(runs.iterdir()))
    last, previous = run_dir / "last.pt", run_dir / "last.prev.pt"
    assert previous.is_file()
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a torn file, as a failing disk might leave

    resumed = run_cli("run", "--resume", str(run_dir), "--results-dir", str(results), "-q")
    assert resumed.returncode == 0, resumed.stderr
    warning = [line for line in resumed.stderr.splitlines() if "last.prev.pt" in line]
    assert len(warning) == 1 and "last.pt" in warning[0] and f"(epoch {done - 1})" in warning[0], resumed.stderr
    _assert_same_as_reference(reference, results, run_dir)


def test_resume_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    missing = run_cli("run", "--resume", "no-such-run", "--runs-dir", str(tmp_path))
    assert missing.returncode == 2 and "no run found" in missing.stderr
    assert "Traceback" not in missing.stderr

    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    changed = run_cli("run", "--resume", str(run_dir), "--defense", "trades", "--epochs", "3")
    assert changed.returncode == 2 and "cannot change" in changed.stderr
    assert "defense" in changed.stderr and "train" in changed.stderr


def test_a_defenses_epoch_state_survives_a_mid_epoch_stop(tmp_path: Path) -> None:
    """UAD-AT with a bank of peers (defense.memory) carries state from batch to batch: a
    stop in the middle of an epoch saves it in last.pt, and the resumed training ends
    with the very weights of an unstopped one. Without that state it would not."""
    from robench.core.config import TrainConfig, resolve, validate
    from robench.engine.checkpoint import load_checkpoint
    from robench.engine.train import TrainingStopped, train
    from robench.workflows.plans import build_model, plan_run
    from robench_plugins.defenses.uadat import UADAT

    plan = plan_run(validate(resolve(None, {"defense": {"name": "uadat"}}, [
        "defense.memory=256", "defense.steps=2", "defense.samples=1", "defense.align=false"])))
    split = plan.dataset.load(None, 0).train  # 1,257 images: 10 steps of 128 per epoch
    cfg = TrainConfig(epochs=2, batch_size=128)

    class StopsAt(UADAT):
        """UAD-AT that sends this process SIGTERM during its ``at``-th batch."""

        def __init__(self, at: int = 0) -> None:
            super().__init__(plan.defense.params)
            self.at, self.calls = at, 0

        def loss(self, model, x, y, threat):
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().loss(model, x, y, threat)

    def trained(run_dir: Path, defense: UADAT, resume=None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(plan)
        train(model, defense, split, plan.threat, cfg, device=torch.device("cpu"),
              generator=torch.Generator().manual_seed(0), run_dir=run_dir, resume=resume)
        return model.state_dict()

    unstopped = trained(tmp_path / "a", StopsAt())
    with pytest.raises(TrainingStopped, match="after step 4 of 10 in epoch 2"):
        trained(tmp_path / "b", StopsAt(at=14))
    last = load_checkpoint(tmp_path / "b" / "last.pt")
    saved = last.train_state["defense"]
    assert saved["next"] == 4 * 128 % 256 and (saved["labels"] >= 0).sum() > 0
    resumed = trained(tmp_path / "b", StopsAt(), resume=last)
    assert all(torch.equal(unstopped[k], resumed[k]) for k in unstopped)
    forgetful = dataclasses.replace(last, train_state={**last.train_state, "defense": None})
    without = trained(tmp_path / "c", StopsAt(), resume=forgetful)
    assert not all(torch.equal(unstopped[k], without[k]) for k in unstopped)
