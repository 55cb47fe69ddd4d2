"""The CLI through real subprocesses: the default run end to end, and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

import robench
from robench.engine.machine import describe_machine


def _single_record(results: Path) -> dict:
    files = sorted((results / "records" / "digits" / "linf-3_16").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_short_run_writes_record_and_leaderboard(results: Path) -> None:
    proc = run_cli(
        "run", "--results-dir", str(results), "--set", "train.epochs=2",
        "--attack", "pgd-5", "--set", "defense.steps=3",
    )
    assert proc.returncode == 0, proc.stderr
    rec = _single_record(results)
    assert rec["defense"]["name"] == "pgd-at" and rec["arch"]["name"] == "smallcnn"
    assert rec["threat"] == {"norm": "Linf", "eps": "3/16", "eps_value": 0.1875}
    assert rec["config"]["defense"]["steps"] == 3 and rec["config"]["train"]["epochs"] == 2
    assert list(rec["accuracy"]) == ["clean", "PGD-5", "worst case"]
    assert len(rec["history"]) == 2 and rec["eval"]["n"] == 360
    # the preset evaluates the checkpoint it reports only; the last too when it is the best
    best_is_last = rec["checkpoints"]["best"]["epoch"] == 2
    assert set(rec["checkpoints"]) == ({"best", "last"} if best_is_last else {"best"})
    board = (results / "digits-linf-3_16.md").read_text()
    for value in rec["accuracy"].values():
        assert f"{value:.2f}" in board  # the leaderboard holds the measured numbers
        assert f"{value:.2f}" in proc.stdout  # and so does the printed table
    assert "pgd-at" in board and "smallcnn" in board
    here, kind = describe_machine(torch.device("cpu")), ("cpu", "simd", "torch", "gpu")  # the machine that ran it
    assert {k: rec["machine"][k] for k in kind} == {k: here[k] for k in kind} and rec["machine"]["threads"] >= 1


@pytest.mark.parametrize("select", ["best", "last"])
def test_eval_checkpoints_selected_evaluates_only_the_reported_one(results: Path, select: str) -> None:
    proc = run_cli(
        "run", "--results-dir", str(results), "--set", "train.epochs=3", "--attack", "fgsm", "--set", "defense.steps=2",
        "--set", "eval.checkpoints=selected", "--set", f"train.select={select}", "--set", "eval.checks=false",
    )
    assert proc.returncode == 0, proc.stderr
    rec = _single_record(results)
    best_is_last = max(rec["history"], key=lambda h: h["val_pgd"])["epoch"] == 3
    assert rec["selected"] == select
    assert set(rec["checkpoints"]) == ({"best", "last"} if best_is_last else {select})  # the same weights: both names
    assert rec["accuracy"] == rec["checkpoints"][select]["accuracy"]
    if select == "last" and not best_is_last:
        assert "the best checkpoint was not evaluated" in proc.stdout
    if select == "best":
        assert rec["checkpoints"]["best"]["selected_by"] == "val_pgd"
        assert rec["checkpoints"]["best"]["epoch"] == max(rec["history"], key=lambda h: h["val_pgd"])["epoch"]
        assert "best checkpoint chosen by validation PGD accuracy" in proc.stdout  # the console says how
        assert ("the best checkpoint is also the last" in proc.stdout) == best_is_last
        assert ("the last checkpoint (epoch 3) was not evaluated" in proc.stdout) == (not best_is_last)


def test_default_run_separates_standard_from_pgd_at(results: Path) -> None:
    """The digits threat model means something: the README's figures, re-measured. The
    default training; of its evaluation, the attacks these figures need."""
    suite = ["--attack", "fgsm", "--attack", "pgd-20", "--set", "eval.checks=false"]
    at = run_cli("run", "--results-dir", str(results), "-q", *suite)
    assert at.returncode == 0, at.stderr
    std = run_cli("run", "--results-dir", str(results), "--defense", "standard", "-q", *suite)
    assert std.returncode == 0, std.stderr
    records = {
        r["defense"]["name"]: r
        for r in (json.loads(p.read_text()) for p in (results / "records").rglob("*.json"))
    }
    assert records["pgd-at"]["accuracy"]["PGD-20"] > 50.0
    assert records["standard"]["accuracy"]["PGD-20"] < 10.0
    assert records["standard"]["accuracy"]["clean"] > 90.0
    board = (results / "digits-linf-3_16.md").read_text()
    assert board.index("pgd-at") < board.index("standard")  # ranked by robust accuracy


def test_console_script_and_version() -> None:
    # where pip put this interpreter's scripts (PATH may not list it, e.g. under pyenv)
    exe = shutil.which("robench", path=sysconfig.get_path("scripts"))
    assert exe, "the robench console script is not installed"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert robench.__version__ in proc.stdout


def test_help_reads() -> None:
    proc = run_cli("--help", fresh=True)
    assert proc.returncode == 0
    assert "run" in proc.stdout and "list" in proc.stdout
    proc = run_cli("run", "--help")
    assert proc.returncode == 0 and "--set" in proc.stdout


def test_list_shows_builtins() -> None:
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    for name in ("digits", "smallcnn", "standard", "pgd-at", "pgd"):
        assert name in proc.stdout
    assert "broken" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--defense", "pgdat"], "did you mean 'pgd-at'"),
        (["run", "--arch", "resnet-9000"], "unknown architecture"),
        (["run", "--set", "defense.stepz=3"], "did you mean 'steps'"),
        (["run", "--set", "defense.steps=0"], "defense.steps"),
        (["run", "--set", "train.lr=fast"], "train.lr"),
        (["run", "--set", "nonsense"], "--set"),
        (["run", "--eps", "2"], "eps"),
        (["run", "--config", "/no/such/config.yaml"], "config file not found"),
        (["run", "--no-such-flag"], "No such option"),
        (["run", "--epochs", "many"], "--epochs"),
        (["list", "gadgets"], "unknown plugin kind"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, results: Path) -> None:
    """In a fresh interpreter: the errors users meet first, from a process started as theirs is."""
    proc = run_cli(*args, "--results-dir", str(results), fresh=True) if args[0] == "run" else run_cli(*args, fresh=True)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not results.exists()  # nothing was trained or written


def test_bad_yaml_is_one_line(tmp_path: Path, results: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    proc = run_cli("run", "--config", str(bad), "--results-dir", str(results))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "line" in proc.stderr
    bad.write_text("train:\n  epochs: 0\n")
    proc = run_cli("run", "--config", str(bad), "--results-dir", str(results))
    assert proc.returncode == 2 and "train.epochs: must be >= 1" in proc.stderr


def test_default_config_file_exists_in_repo() -> None:
    assert (REPO / "configs" / "digits" / "default.yaml").is_file()


def test_unwritable_results_folder_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("run", "--results-dir", str(blocker / "results"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "not writable" in proc.stderr and "train" not in proc.stderr + proc.stdout


def test_missing_dataset_is_one_line_with_the_fix(tmp_path: Path, results: Path) -> None:
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    proc = run_cli("run", "--data", "cifar10", "--results-dir", str(results), env={"ROBENCH_DATA": str(empty)})
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert str(empty) in line and "robench data fetch cifar10" in line and "--download" in line
    assert "Traceback" not in proc.stderr


def test_data_where_follows_flag_and_env(tmp_path: Path) -> None:
    env = {"ROBENCH_DATA": str(tmp_path / "d"), "XDG_CACHE_HOME": str(tmp_path / "c")}
    proc = run_cli("data", "where", env=env)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[:2] == [f"1. {tmp_path / 'd'} ($ROBENCH_DATA)",
                                            f"2. {tmp_path / 'c' / 'robench' / 'data'} (cache)"]
    proc = run_cli("data", "where", "--data-root", str(tmp_path / "x"), env=env)
    assert proc.stdout.splitlines()[:3] == [f"1. {tmp_path / 'x'} (--data-root)", f"2. {tmp_path / 'd'} ($ROBENCH_DATA)",
                                            f"3. {tmp_path / 'c' / 'robench' / 'data'} (cache)"]


def test_data_fetch_of_embedded_dataset_needs_no_network(tmp_path: Path) -> None:
    proc = run_cli("data", "fetch", "digits", "--data-root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "train 1257, val 180, test 360" in proc.stdout


def test_list_architectures_shows_sizes() -> None:
    proc = run_cli("list", "architectures", "--input-size", "32")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "smallcnn" in line)
    assert "M" in row and "ok" in row  # parameter and MAC counts, e.g. "0.52 M"
    assert "3x32x32" in proc.stdout


def test_pgd_at_preact_resnet18_on_real_format_cifar10(tmp_path: Path, results: Path) -> None:
    """The issue's acceptance run: real torchvision pickle batches written here, CPU, one epoch."""
    from dataset_files import write_cifar10

    write_cifar10(tmp_path / "data", per_batch=60)  # 300 training images (50 held out), 60 test
    proc = run_cli(
        "run", "--defense", "pgd-at", "--arch", "preact-resnet-18", "--data", "cifar10",
        "--data-root", str(tmp_path / "data"), "--results-dir", str(results), "--epochs", "1", "-q",
        "--set", "data.verify_checksums=false", "--set", "data.val_size=50",
        "--set", "defense.steps=2", "--attack", "pgd-2", "--set", "train.batch_size=50",
        "--set", "eval.checks=false",  # robench's checks are tested on digits; an 11M net on CPU is slow
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = (results / "records" / "cifar10" / "linf-8_255").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["arch"]["name"] == "preact-resnet-18" and rec["dataset"] == "cifar10"
    assert abs(rec["arch"]["num_params"] - 11.17e6) / 11.17e6 < 0.005
    assert rec["threat"]["eps"] == "8/255" and rec["eval"]["n"] == 60
    assert list(rec["accuracy"]) == ["clean", "PGD-2", "worst case"] and rec["eval"]["checks"] == []
    assert (results / "cifar10-linf-8_255.md").is_file()


def test_list_shows_one_plugins_hyperparameters() -> None:
    proc = run_cli("list", "defense", "TRADES")
    assert proc.returncode == 0, proc.stderr
    assert f"defense trades (robench {robench.__version__}): --set defense.KEY=VALUE" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if "beta" in line)
    assert "a number >= 0" in row and "6.0" in row and "weight of the KL term" in row
    attack = run_cli("list", "attack", "pgd")
    assert attack.returncode == 0 and "pgd-N sets steps" in attack.stdout
    missing = run_cli("list", "defense", "nope")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: unknown defense 'nope'")
