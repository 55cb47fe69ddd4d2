"""``robench sweep``: grids, idempotence, parallel and submitit runners, stop and resume.

The runs are real ``robench run`` processes on digits, made short (one epoch, FGSM
only) so that the sweep machinery, not training, is what these tests spend time on.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from robench.api.errors import ConfigError
from robench.core.config import parse_set
from robench.results.records import load_records
from robench.workflows.sweep.budget import estimate_seconds
from robench.workflows.sweep.grid import SweepSpec, expand, load_sweep, override, set_item
from robench.workflows.sweep.local import slot_env
from robench.workflows.sweep.plan import plan_sweep

#: every run of these tests: one epoch, FGSM, no extra checks
SHORT = ["--epochs", "1", "--attack", "fgsm", "--set", "eval.checks=false"]


def _records(results: Path) -> list:
    records, skipped = load_records(results / "records")
    assert not skipped
    return records


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------ the grid
@pytest.mark.parametrize("value", ["8/255", "on", "", " x", 6, 0.1, True, None, [1, 2],
                                   ["fgsm", {"name": "pgd", "steps": 20}], {"name": "trades", "beta": 6.0}])
def test_set_items_parse_back_to_the_same_value(value: object) -> None:
    item = set_item("defense.beta" if not isinstance(value, (list, dict)) else "attacks", value)
    key, _, _ = item.partition("=")
    parsed = parse_set([item])
    assert (parsed["defense"]["beta"] if key == "defense.beta" else parsed["attacks"]) == value
    if value == "8/255":
        assert item == "defense.beta=8/255"  # plain words stay readable


def test_sweep_file_is_a_union_of_products(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    base = _write(tmp_path / "configs" / "a.yaml", {"train": {"epochs": 2}})
    spec = load_sweep(_write(tmp_path / "grid.yaml", {
        "grid": [
            {"defense": ["pgd-at", "trades"], "seed": [0, 1]},
            {"config": ["configs/a.yaml"], "defense": ["trades"], "defense.beta": [1, 6]},
        ],
        "set": {"train": {"batch_size": 32}, "eval.checks": False},
    }))
    assert spec.name == "grid" and spec.config is None
    points = expand(spec)
    assert len(points) == 4 + 2
    fixed = ("train.batch_size=32", "eval.checks=false")
    assert points[0] == (None, (*fixed, "defense=pgd-at", "seed=0"))
    assert points[-1] == (base.resolve(), (*fixed, "defense=trades", "defense.beta=6"))
    # command-line axes replace the file's in every product, and repeated points collapse
    flagged = override(spec, [("defense", ("mart",)), ("seed", (3,))])
    assert [items[-2:] if len(items) > 4 else items[2:] for _, items in expand(flagged)][:1] == [("defense=mart", "seed=3")]
    assert len(expand(flagged)) == 1 + 2


@pytest.mark.parametrize("data, message", [
    ({"grid": {"defense": ["pgd-at"]}, "sett": {}}, "unknown key 'sett' (did you mean 'set'?)"),
    ({"set": {"seed": 1}}, "no grid"),
    ({"grid": {"defense": "pgd-at"}}, "defense: expected a non-empty list of values"),
    ({"grid": {"defence": ["pgd-at"]}}, "unknown key 'defence' (did you mean 'defense'"),
    ({"grid": {"train.epochs.x": [1]}}, "must be 'key' or 'section.key'"),
    ({"grid": {"config": ["missing.yaml"]}}, "'missing.yaml' not found"),
    ({"grid": []}, "the grid is an empty list"),
])
def test_bad_sweep_files_name_the_problem(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(_write(tmp_path / "s.yaml", data))


def test_a_bad_point_fails_the_plan_before_anything_runs(tmp_path: Path) -> None:
    spec = override(SweepSpec("t", None, ()), [("defense", ("pgd-at", "trades")), ("defense.beta", (6, -1))])
    with pytest.raises(ConfigError, match=r"point defense=pgd-at defense.beta=6: .*beta"):
        plan_sweep(spec, runs_dir=tmp_path)  # pgd-at has no beta: the first point already fails


def test_the_committed_digits_grid_regenerates_the_committed_board() -> None:
    """configs/sweeps/digits.yaml plans exactly the runs behind leaderboards/digits-linf-3_16.md."""
    plan = plan_sweep(load_sweep(REPO / "configs" / "sweeps" / "digits.yaml"),
                      flags={"results_dir": REPO / "leaderboards"})  # as the sweep file says to run it
    assert len(plan.points) == 30 and plan.duplicates == 0  # 5 defenses and equal-compute PGD-AT, 5 seeds
    assert len(plan.recorded) == 30 and plan.todo == []
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "leaderboards/records/digits/linf-3_16"],
                             capture_output=True, text=True, check=True).stdout.split()
    records = [r for r in _records(REPO / "leaderboards") if f"leaderboards/records/digits/linf-3_16/{r.run_id}.json" in tracked]
    assert len(records) == 30
    assert {(p.config_hash, p.seed) for p in plan.points} == {(r.config_hash, r.seed) for r in records}


def test_the_cifar10_grid_is_every_defense_on_two_architectures_with_three_seeds(tmp_path: Path) -> None:
    plan = plan_sweep(load_sweep(REPO / "configs" / "sweeps" / "cifar10.yaml"), runs_dir=tmp_path)
    combos = {(p.label.split()[0], p.label.split()[1], p.seed) for p in plan.points}
    assert len(plan.points) == len(combos) == 30
    assert {d for d, _, _ in combos} == {"pgd-at", "trades", "mart", "uadat", "standard"}
    assert {a for _, a, _ in combos} == {"wrn-34-10", "preact-resnet-18"} and {s for *_, s in combos} == {0, 1, 2}


def test_the_fashion_mnist_grid_is_five_defenses_three_seeds_plus_preact_resnet(tmp_path: Path) -> None:
    plan = plan_sweep(load_sweep(REPO / "configs" / "sweeps" / "fashion-mnist.yaml"), runs_dir=tmp_path)
    combos = {(p.label.split()[0], p.label.split()[1], p.seed) for p in plan.points}
    assert len(plan.points) == len(combos) == 20 and plan.duplicates == 0
    defenses = {"pgd-at", "trades", "mart", "uadat", "standard"}
    assert {(d, s) for d, a, s in combos if a == "trades-smallcnn"} == {(d, s) for d in defenses for s in (0, 1, 2)}
    assert {(d, s) for d, a, s in combos if a == "preact-resnet-18"} == {(d, 0) for d in defenses}
    assert {p.record_dir.parts[-2:] for p in plan.points} == {("fashion-mnist", "linf-0.1")}


def test_parallel_workers_split_the_machine() -> None:
    env = slot_env(1, jobs=2, gpus_each=2, gpus=4, cpus=8, base={})
    assert env == {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert slot_env(0, jobs=1, gpus_each=1, gpus=4, cpus=8, base={}) == {}
    assert "CUDA_VISIBLE_DEVICES" not in slot_env(0, jobs=4, gpus_each=2, gpus=4, cpus=8, base={})  # too few GPUs
    assert slot_env(0, jobs=2, gpus_each=1, gpus=2, cpus=8, base={"OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"


# ------------------------------------------------------------------- the CLI, for real
@pytest.mark.parametrize("args, message", [
    (["--runner", "pbs", "--defense", "pgd-at"], "--runner 'pbs': use one of local, slurm, submitit-local"),
    (["--seeds", "0,x"], "--seeds expects comma-separated integers"),
    (["--grid", "defense.beta"], "--grid expects KEY=VALUE1,VALUE2"),
    (["--defense", "pgd-at", "--grid", "defense.steps=2,0"], "point defense=pgd-at defense.steps=0"),
    ([], "no grid; give a sweep file or at least one of"),
    (["--runner", "slurm", "--jobs", "2", "--defense", "pgd-at"], "--jobs is for the local runner"),
    (["--runner", "slurm", "--defense", "standard", "--seeds", "0"], "--runner slurm: Could not detect"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_cli("sweep", *args, "--runs-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_local_sweep_in_parallel_is_idempotent(tmp_path: Path) -> None:
    """2 defenses x 2 seeds, two at a time; the rerun runs nothing; the board holds each run once."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["sweep", "--defense", "pgd-at", "--defense", "standard", "--seeds", "0,1", *SHORT, "--jobs", "2",
            "--name", "tiny", "--results-dir", str(results), "--runs-dir", str(runs), "-q"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 run(s): 0 recorded already, 0 to resume, 4 to start" in first.stdout
    records = _records(results)
    assert sorted((r.defense["name"], r.seed) for r in records) == [
        ("pgd-at", 0), ("pgd-at", 1), ("standard", 0), ("standard", 1)]
    assert all(r.train["epochs"] == 1 and list(r.accuracy) == ["clean", "FGSM", "worst case"] for r in records)
    for r in records:  # each run's checkpoints live in its point's own folder
        assert len(list((runs / "sweeps" / "tiny").glob(f"*-s{r.seed}-{r.config_hash}/{r.run_id}/last.pt"))) == 1
    board = (results / "digits-linf-3_16.md").read_text()
    assert "from 4 run record(s)" in board and board.count("| pgd-at ") == 1 and board.count("| standard ") == 1
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "4 recorded already, 0 to resume, 0 to start" in second.stdout and "nothing to run" in second.stdout
    assert len(_records(results)) == 4
    by_seed = run_cli("leaderboard", "--results-dir", str(results), "--by", "seed", "-f", "csv")
    assert by_seed.returncode == 0, by_seed.stderr
    assert len(by_seed.stdout.strip().splitlines()) == 1 + 4  # header + every run once


def test_a_stopped_sweep_resumes_its_runs(tmp_path: Path) -> None:
    """SIGTERM to the sweep reaches its run, which saves last.pt; the rerun resumes that run."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["sweep", "--defense", "pgd-at", "--seeds", "0", "--attack", "fgsm", "--set", "eval.checks=false",
            "--epochs", "2", "--name", "stop", "--results-dir", str(results), "--runs-dir", str(runs), "-q"]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robench", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(p.stat().st_size for p in (runs / "sweeps" / "stop").glob("*/*/log.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    assert "1 run(s) saved a checkpoint" in stderr and "rerun the same command" in stderr
    (run_dir,) = [p.parent for p in (runs / "sweeps" / "stop").glob("*/*/last.pt")]
    assert _records(results) == []
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 to resume, 0 to start" in again.stdout and "resumed" in again.stdout
    (record,) = _records(results)
    assert record.run_id == run_dir.name and len(record.history) == 2
    assert [p.parent for p in (runs / "sweeps" / "stop").glob("*/*/last.pt")] == [run_dir]
    assert '"--resume"' in (run_dir.parent / "log.txt").read_text()


def test_a_budget_starts_only_what_its_records_say_can_finish(tmp_path: Path) -> None:
    """--budget: seed 0's record says a run takes a few seconds, so seed 1 does not start
    with about one second left; with ten minutes it does."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--defense", "pgd-at", *SHORT, "--name", "budget", "--results-dir", str(results), "--runs-dir", str(runs), "-q"]
    seed0 = run_cli("sweep", "--seeds", "0", *common)
    assert seed0.returncode == 0, seed0.stdout + seed0.stderr
    (done,) = _records(results)
    assert done.wall_time_s > 1.2  # the test's premise: longer than the budget below
    short = run_cli("sweep", "--seeds", "0,1", *common, "--budget", "0.02")
    assert short.returncode == 0, short.stdout + short.stderr
    assert "budget of 0.02 min: 0 run(s) stopped at its end with a checkpoint, 1 not started" in short.stderr
    assert re.search(r"skipped  pgd-at .* seed 1: needs about \d+ s by its records here, [01] s left", short.stderr), short.stderr
    assert len(_records(results)) == 1
    ample = run_cli("sweep", "--seeds", "0,1", *common, "--budget", "10")
    assert ample.returncode == 0, ample.stdout + ample.stderr
    assert "1 recorded already, 0 to resume, 1 to start" in ample.stdout and "budget of" not in ample.stderr
    assert sorted(r.seed for r in _records(results)) == [0, 1]
    slurm = run_cli("sweep", "--seeds", "0", *common, "--budget", "5", "--runner", "slurm")
    assert slurm.returncode == 2 and "--budget is for the local runner" in slurm.stderr


def test_a_budget_estimates_a_new_experiment_from_runs_on_the_same_data(tmp_path: Path) -> None:
    """An experiment with no record of its own takes the time of its kind trained on the
    same data settings and epochs (the longest committed 10,000-image PGD-AT run), not of
    one on all 60,000 images (which takes longer); with no such run, the longest of its
    kind."""
    results = tmp_path / "results"
    common = ["data.train_subset=10000", "defense.steps=16", "seed=0"]
    config = REPO / "configs" / "fashion-mnist" / "pgd-at-trades-smallcnn.yaml"
    points = {epochs: plan_sweep(SweepSpec("estimate", config, ((),), (*common, f"train.epochs={epochs}")),
                                 flags={"results_dir": results}, runs_dir=tmp_path / "runs").points[0]
              for epochs in (10, 5)}
    source = REPO / "leaderboards" / "records" / "fashion-mnist" / "linf-0.1"
    walls = {}
    points[10].record_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*-pgd-at-*.json")):
        record = json.loads(path.read_text())
        record["device"] = points[10].machine  # as if made on this machine
        subset = record["config"]["data"].get("train_subset")
        walls[subset] = max(walls.get(subset, 0.0), record["wall_time_s"])
        (points[10].record_dir / path.name).write_text(json.dumps(record))
    assert set(walls) == {None, 10000} and walls[None] > walls[10000]
    assert estimate_seconds(points[10]) == walls[10000]
    assert estimate_seconds(points[5]) == walls[None]


def test_a_spent_budget_stops_the_running_run_resumably(tmp_path: Path) -> None:
    """At the budget's end the running run saves last.pt and stops; the sweep exits 0."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["sweep", "--defense", "pgd-at", "--seeds", "0", "--attack", "fgsm", "--set", "eval.checks=false",
            "--epochs", "30", "--name", "deadline", "--results-dir", str(results), "--runs-dir", str(runs), "-q"]
    cut = run_cli(*args, "--budget", "0.25")  # 15 s, then SIGTERM to a run of about a minute
    assert cut.returncode == 0, cut.stdout + cut.stderr
    assert "1 run(s) stopped at its end with a checkpoint, 0 not started" in cut.stderr
    assert _records(results) == [] and len(list((runs / "sweeps" / "deadline").glob("*/*/last.pt"))) == 1


def test_a_point_running_elsewhere_is_not_started_twice(tmp_path: Path) -> None:
    results, runs = tmp_path / "results", tmp_path / "runs"
    spec = override(SweepSpec("busy", None, ()), [("defense", ("standard",)), ("seed", (0,))])
    (point,) = plan_sweep(spec, flags={"results_dir": str(results)}, runs_dir=runs).points
    point.folder.mkdir(parents=True)
    with open(point.folder / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = run_cli("sweep", "--defense", "standard", "--seeds", "0", "--name", "busy",
                       "--results-dir", str(results), "--runs-dir", str(runs), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "busy" in proc.stderr and "running in another process" in proc.stderr
    assert _records(results) == [] and [p.name for p in point.folder.iterdir()] == [".lock"]


def test_a_failing_run_is_reported_with_its_log(tmp_path: Path) -> None:
    """CIFAR-10 files are missing: the run fails (exit 2); the sweep names it and exits 1."""
    proc = run_cli("sweep", "--data", "cifar10", "--defense", "pgd-at", "--seeds", "0", "--name", "broken",
                   "--data-root", str(tmp_path / "empty"), "--results-dir", str(tmp_path / "results"),
                   "--runs-dir", str(tmp_path / "runs"), "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed  pgd-at smallcnn cifar10 seed 0: exit 2: error: cifar10: no CIFAR-10 data" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 run(s) failed; first log:")


def test_submitit_local_executor_runs_each_point_as_a_job(tmp_path: Path) -> None:
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["sweep", "--defense", "pgd-at", "--defense", "standard", "--seeds", "0", *SHORT,
            "--runner", "submitit-local", "--name", "jobs", "--results-dir", str(results), "--runs-dir", str(runs), "-q"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 2 job(s)" in proc.stdout
    assert sorted(r.defense["name"] for r in _records(results)) == ["pgd-at", "standard"]
    jobs = runs / "sweeps" / "jobs" / "submitit"
    assert len(list(jobs.glob("*/*_result.pkl"))) == 2  # submitit's own record of each finished job
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing to run" in again.stdout


def test_slurm_jobs_ask_for_what_the_flags_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sbatch script submitit would submit; ``srun`` only has to exist for submitit to build it."""
    from robench.workflows.sweep.slurm import SlurmOptions, make_executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(gpus=2, cpus_per_task=8, timeout_min=90, partition="gpu", extra={"account": "abc"})
    script = make_executor(tmp_path / "jobs", "cifar10", options)._executor._make_submission_file_text("cmd", "u")
    for line in ("--gpus-per-node=2", "--cpus-per-task=8", "--time=90", "--partition=gpu", "--account=abc",
                 "--ntasks-per-node=1", "--nodes=1", "--job-name=robench-cifar10", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
