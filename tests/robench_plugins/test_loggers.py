"""The built-in loggers, each read back with its own library, offline.

Real ``robench run`` subprocesses on digits log to the JSON-lines epoch log,
TensorBoard (read with tensorboard's EventAccumulator), W&B in offline mode (its
``.wandb`` file read with W&B's protobufs) and MLflow with a local file store (read
with MlflowClient). What each received is compared with the run's record.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_files import read_offline_run

QUICK = ["--epochs", "3", "--set", "defense.steps=2", "--attack", "fgsm", "--attack", "pgd-5", "--n-eval", "100",
         "--set", "eval.checks=false", "-q"]
#: W&B offline and silent; MLflow's file store allowed (MLflow 3 asks for the opt-in)
ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}


def _loggers(store: Path, every: int = 5) -> list[str]:
    return ["--set", f"loggers=[jsonl, tensorboard, wandb, {{name: mlflow, tracking_uri: '{store.as_uri()}'}}]",
            "--set", f"engine.log_every={every}"]


def _record(results: Path) -> dict:
    (path,) = results.rglob("records/**/*.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path, subprocess.CompletedProcess[str]]:
    """One 3-epoch run with every built-in logger: its record, run folder, MLflow store and output."""
    root = tmp_path_factory.mktemp("logged")
    store = root / "mlruns"
    done = run_cli("run", *QUICK, *_loggers(store), "--results-dir", str(root / "results"),
                   "--runs-dir", str(root / "runs"), env=ENV)
    assert done.returncode == 0, done.stderr
    record = _record(root / "results")
    return record, root / "runs" / record["run_id"], store, done


def _epoch_values(record: dict, key: str) -> list[tuple[int, float]]:
    return [(h["epoch"], h[key]) for h in record["history"]]


def _same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """Same steps, same values up to float32 rounding (TensorBoard stores float32)."""
    return [s for s, _ in got] == [s for s, _ in expected] and all(
        v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(got, expected, strict=True))


def test_every_logger_ran_without_a_warning(logged_run) -> None:
    *_, done = logged_run
    assert "warning" not in done.stderr, done.stderr


def test_the_epoch_log_is_the_records_history(logged_run) -> None:
    record, run_dir, *_ = logged_run
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    best = record["validation"]["epoch"]
    assert lines == [{**h, "best": h["epoch"] == best} for h in record["history"]]


def test_tensorboard_holds_epochs_steps_results_and_hparams(logged_run) -> None:
    record, run_dir, *_ = logged_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    for key in ("loss", "accuracy", "val_pgd", "lr"):
        assert _same(scalars(f"epoch/{key}"), _epoch_values(record, key)), key
    steps = [step for step, _ in scalars("step/loss")]
    assert steps == list(range(5, 3 * 20 + 1, 5))  # every 5th of 3 x 20 steps (1257 images / 64)
    for attack, accuracy in record["accuracy"].items():
        assert _same(scalars(f"test/selected/{attack}"), [(3, accuracy)]), attack
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert "config/text_summary" in events.Tags()["tensors"]


def test_wandb_offline_run_holds_config_history_summary_and_artifacts(logged_run) -> None:
    record, run_dir, *_ = logged_run
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = read_offline_run(path)
    assert (run.run_id, run.project, run.group) == (record["run_id"], "robench", record["config_hash"])
    assert run.config["train"] == record["config"]["train"] and run.config["defense"] == record["config"]["defense"]
    epochs = [(row["epoch"], row["epoch/loss"]) for row in run.history if "epoch/loss" in row]
    assert _same(epochs, _epoch_values(record, "loss"))
    assert [row["step"] for row in run.history if "step/loss" in row] == list(range(5, 61, 5))
    for attack, accuracy in record["accuracy"].items():
        assert run.summary[f"test/selected/{attack}"] == pytest.approx(accuracy)
    names = {name: (kind, files) for name, kind, files in run.artifacts}
    rid = record["run_id"]
    assert names[f"{rid}-record"] == ("record", [f"{rid}.json"])
    assert names[f"{rid}-last"] == ("model", ["last.pt"])
    assert run.exit_code == 0


def test_mlflow_run_holds_params_metrics_artifacts_and_status(logged_run) -> None:
    record, _, store, _ = logged_run
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("robench")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["robench_run_id"] == record["run_id"]
    assert run.data.tags["robench_config_hash"] == record["config_hash"]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(record["config"]["train"]["lr"])
    assert run.data.params["defense.name"] == "pgd-at"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch/val_pgd")]
    assert _same(sorted(history), _epoch_values(record, "val_pgd"))
    assert len(client.get_metric_history(run.info.run_id, "step/loss")) == 12
    for attack, accuracy in record["accuracy"].items():
        assert run.data.metrics[f"test/selected/{attack}"] == pytest.approx(accuracy)
    stored = {a.path for folder in ("checkpoints", "records") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"checkpoints/last.pt", f"records/{record['run_id']}.json"} <= stored


def test_a_failing_logger_warns_once_and_the_run_goes_on(tmp_path: Path) -> None:
    """MLflow pointed at a server that is not there (the network down) and an epoch log
    written over TensorBoard's folder (a write that fails): one warning each, and the
    run trains, evaluates and records as without them."""
    env = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    done = run_cli("run", *QUICK, "--set", "loggers=[{name: jsonl, file: tensorboard}, "
                   "{name: mlflow, tracking_uri: 'http://127.0.0.1:9'}, tensorboard]",
                   "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, done.stderr
    assert any("logger 'mlflow' failed in start" in w for w in warnings), warnings
    assert any("logger 'jsonl' failed in log_epoch" in w for w in warnings), warnings
    assert "Traceback" not in done.stderr
    record = _record(tmp_path / "results")
    assert record["accuracy"]  # evaluated and recorded
    assert list((tmp_path / "runs" / record["run_id"] / "tensorboard").glob("events.*"))  # the others went on


def test_logger_errors_in_the_config_are_one_line(tmp_path: Path) -> None:
    unknown = run_cli("run", "--logger", "tensorbord", "--results-dir", str(tmp_path))
    assert unknown.returncode == 2 and "unknown logger 'tensorbord'" in unknown.stderr, unknown.stderr
    assert "tensorboard" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = run_cli("run", "--set", "loggers=[{name: wandb, mode: online-ish}]", "--results-dir", str(tmp_path))
    assert bad.returncode == 2 and "loggers.wandb.mode" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "records").exists()


def _wait_for_epochs(run_dir_parent: Path, n: int, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 300
    while True:
        logs = list(run_dir_parent.glob("*/log.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= n:
            return logs[0].parent
        assert proc.poll() is None and time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)


def test_a_resumed_run_continues_its_loggers_runs(tmp_path: Path) -> None:
    """SIGTERM after the first epoch, then --resume adding TensorBoard: MLflow continues the
    same run (one run, each epoch once), W&B hears 'stopped' then the resumed run's end."""
    store, runs, results = tmp_path / "mlruns", tmp_path / "runs", tmp_path / "results"
    loggers = ["--set", f"loggers=[jsonl, wandb, {{name: mlflow, tracking_uri: '{store.as_uri()}'}}]"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "robench", "run", *QUICK, *loggers, "--results-dir", str(results), "--runs-dir", str(runs)],
        cwd=str(REPO), env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        run_dir = _wait_for_epochs(runs, 1, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    resumed = run_cli("run", "--resume", str(run_dir), "--logger", "tensorboard", "--results-dir", str(results),
                      "-q", env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    record = _record(results)

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("robench").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["robench_run_id"] == record["run_id"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch/loss"))
    assert _same(history, _epoch_values(record, "loss"))

    first, second = (read_offline_run(p) for p in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")))
    assert first.run_id == second.run_id == record["run_id"]
    assert (first.exit_code, second.exit_code) == (143, 0)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged = [e.step for e in events.Scalars("epoch/loss")]
    assert logged[-1] == 3 and logged == sorted(set(logged))  # from the resumed epoch on
