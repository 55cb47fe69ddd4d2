"""``robench tune``: equal trials per defense, validation-only choice, fresh final seeds.

The end-to-end test runs real ``robench run`` processes on digits (one epoch, FGSM
only), so the tuning machinery, not training, is what it spends time on.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from robench.api.errors import ConfigError
from robench.results.leaderboard import refresh_leaderboard
from robench.results.records import load_records
from robench.workflows.sweep.grid import load_sweep
from robench.workflows.sweep.plan import plan_sweep
from robench.workflows.tune import gather, plan_tuning
from robench.workflows.tune.selection import Trial, choose, chosen_settings
from robench.workflows.tune.spec import draw_trials, final_sweep, load_tuning

DIGITS = REPO / "configs" / "tuning" / "digits.yaml"


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _tuning(**changes: object) -> dict:
    base = {"trials": 2, "tuning_seeds": [7, 8], "final_seeds": [0],
            "candidates": [{"defense": "pgd-at", "space": {"defense.step_size": [0.02, 0.05]}},
                           {"defense": "standard"}]}
    return {**base, **changes}


# ------------------------------------------------------------------- the tuning file
def test_the_digits_tuning_gives_every_defense_four_trials() -> None:
    spec = load_tuning(DIGITS)
    tuned = {c.label: c.trials for c in spec.candidates if c.trials}
    assert set(tuned) == {"uadat", "pgd-at", "pgd-at (defense.steps=16)", "trades", "mart"}
    assert {len(t) for t in tuned.values()} == {spec.trials} == {4}
    assert [c.label for c in spec.candidates if not c.trials] == ["standard"]
    assert not set(spec.tuning_seeds) & set(spec.final_seeds) and len(spec.final_seeds) >= 5
    assert len(spec.tuning_seeds) >= 2
    # UAD-AT's 3 x 3 grid is drawn down to four, the same four every time, in grid order
    uadat = tuned["uadat"]
    assert len(set(uadat)) == 4 and uadat == load_tuning(DIGITS).candidates[0].trials
    grid = [(("defense.beta", b), ("defense.align_weight", a)) for b in (0.25, 0.5, 1.0) for a in (0.05, 0.1, 0.2)]
    assert sorted(uadat, key=grid.index) == list(uadat) and set(uadat) <= set(grid)


def test_the_fashion_mnist_tuning_fits_a_cpu_budget_with_equal_trials(tmp_path: Path) -> None:
    spec = load_tuning(REPO / "configs" / "tuning" / "fashion-mnist.yaml")
    assert {len(c.trials) for c in spec.candidates if c.trials} == {4} and len(spec.candidates) == 6
    assert "data.train_subset=10000" in spec.fixed and "eval.n_eval=1000" in spec.final_fixed
    plan = plan_tuning(spec, {"results_dir": str(tmp_path)}, tmp_path)
    assert len(plan.points) == 40 and {p.record_dir.parts[-2:] for p in plan.points} == {("fashion-mnist", "linf-0.1")}


def test_a_larger_space_is_drawn_by_its_seed() -> None:
    space = [("defense.beta", (1, 2, 3, 4, 5))]
    assert draw_trials(space, 5, 0, "x") == tuple((("defense.beta", v),) for v in (1, 2, 3, 4, 5))
    draws = {draw_trials(space, 2, seed, "x") for seed in range(20)}
    assert len(draws) > 1 and all(len(d) == 2 for d in draws)
    assert draw_trials(space, 2, 3, "x") == draw_trials(space, 2, 3, "x")


@pytest.mark.parametrize("changes, message", [
    ({"trials": 3}, "2 setting(s) for 3 trials; every tuned candidate needs at least 3"),
    ({"final_seeds": [8, 9]}, "final_seeds must be fresh; [8] also tune"),
    ({"tuning_seeds": [7, 7]}, "a seed is listed twice"),
    ({"score": "test_pgd"}, "score must be one of val_pgd, val_clean"),
    ({"trial": 2}, "unknown key 'trial' (did you mean 'trials'?)"),
    ({"candidates": [{"defense": "pgd-at"}, {"defense": "pgd-at"}]}, "two candidates are both 'pgd-at'"),
    ({"candidates": [{"defense": "trades", "spaces": {}}]}, "unknown key 'spaces' (did you mean 'space'?)"),
    ({"candidates": [{"defense": "trades", "space": {"defense.beta": 6}}]}, "expected a non-empty list of values"),
])
def test_bad_tuning_files_name_the_problem(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_tuning(_write(tmp_path / "t.yaml", _tuning(**changes)))


def test_two_trials_that_are_the_same_run_are_refused(tmp_path: Path) -> None:
    same = {"defense": "pgd-at", "space": {"defense.step_size": [0.02, 0.05]}}
    spec = load_tuning(_write(tmp_path / "t.yaml", _tuning(candidates=[same, {**same, "label": "again"}])))
    with pytest.raises(ConfigError, match=r"pgd-at with defense.step_size=0.02 and again with .* are the same run"):
        plan_tuning(spec, {"results_dir": str(tmp_path)}, tmp_path)


def test_the_highest_mean_wins_and_the_first_listed_on_a_tie() -> None:
    def trial(name: str, *scores: float) -> Trial:
        return Trial("c", {"x": name}, dict(enumerate(scores)), name)

    assert choose([trial("a", 50, 60), trial("b", 70, 30), trial("c", 54, 55)]).config_hash == "a"
    assert choose([trial("a", 50, 60), trial("b", 60, 50)]).config_hash == "a"
    assert trial("a", 50, 60).mean == 55 and trial("a", 50, 60).std == pytest.approx(statistics.stdev([50, 60]))


def test_a_trial_that_diverged_with_any_seed_is_not_chosen() -> None:
    def trial(name: str, scores: dict[int, float], diverged: dict[int, str] | None = None) -> Trial:
        return Trial("c", {"x": name}, scores, name, diverged or {})

    lost = trial("b", {0: 90.0}, {1: "the training loss became NaN or inf in epoch 3"})
    assert choose([trial("a", {0: 50.0, 1: 60.0}), lost]).config_hash == "a"
    assert lost.mean == 90.0 and math.isnan(trial("c", {}, {0: "NaN", 1: "NaN"}).mean)
    with pytest.raises(ConfigError, match="every setting of c diverged with some tuning seed"):
        choose([lost])


def test_the_digits_plan_validates_only_and_records_apart(tmp_path: Path) -> None:
    spec = load_tuning(DIGITS)
    plan = plan_tuning(spec, {"results_dir": str(tmp_path)}, tmp_path)
    assert len(plan.points) == 5 * 4 * 2 and len({(p.config_hash, p.seed) for p in plan.points}) == 40
    assert all("eval.checkpoints=none" in p.layers for p in plan.points)
    assert {p.record_dir for p in plan.points} == {tmp_path / "tuning" / "digits" / "records" / "digits" / "linf-3_16"}
    chosen = {c.label: c.trials[-1] for c in spec.candidates if c.trials}
    final = plan_sweep(final_sweep(spec, chosen), flags={"results_dir": str(tmp_path)}, runs_dir=tmp_path)
    assert len(final.points) == 6 * 5 and {p.seed for p in final.points} == set(spec.final_seeds)
    assert {p.record_dir for p in final.points} == {tmp_path / "records" / "digits" / "linf-3_16"}
    assert not any("eval.checkpoints=none" in p.layers for p in final.points)


def test_the_committed_digits_tuning_is_recorded_and_chose_the_boards_settings() -> None:
    """leaderboards/tuning/digits/ holds every tuning run; its choice, recomputed from
    those records, is what configs/sweeps/digits.yaml (the board's grid) trains."""
    spec = load_tuning(DIGITS)
    plan = plan_tuning(spec, {"results_dir": str(REPO / "leaderboards")})
    assert plan.folder == REPO / "leaderboards" / "tuning" / "digits" and plan.todo == []
    trials = gather(spec, plan)
    chosen = {label: choose(ts) for label, ts in trials.items()}
    saved = json.loads((plan.folder / "selection.json").read_text())
    assert {c["label"]: c["chosen"] for c in saved["candidates"]} == {
        c.label: (chosen[c.label].setting if c.label in chosen else None) for c in spec.candidates}
    final = final_sweep(spec, chosen_settings(chosen, spec.candidates))
    committed = load_sweep(REPO / "configs" / "sweeps" / "digits.yaml")
    assert (committed.config, committed.grids, committed.fixed) == (final.config, final.grids, final.fixed)


# ------------------------------------------------------------------- for real
def test_tune_chooses_on_validation_then_runs_fresh_seeds_into_the_board(tmp_path: Path) -> None:
    results, runs = tmp_path / "results", tmp_path / "runs"
    spec = _tuning(config=str(REPO / "configs" / "digits" / "default.yaml"),
                   set={"train.epochs": 1, "attacks": ["fgsm"], "eval.checks": False})
    file = _write(tmp_path / "tiny.yaml", spec)
    args = ["tune", str(file), "--jobs", "2", "--results-dir", str(results), "--runs-dir", str(runs), "-q"]
    dry = run_cli(*args, "--dry-run")
    assert dry.returncode == 0 and "2 trial(s) x 2 seed(s) = 4 tuning run(s), 0 recorded; then 2 final" in dry.stdout

    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    folder = results / "tuning" / "tiny"
    tuning, skipped = load_records(folder / "records")
    assert not skipped and len(tuning) == 4
    assert all(not r.evaluated and r.checkpoints == {} and r.validation["val_pgd"] is not None for r in tuning)
    assert not list((runs / "sweeps" / "tiny-tuning").rglob("eval-*.json"))  # nothing evaluated on the test set
    logs = "".join(p.read_text() for p in (runs / "sweeps" / "tiny-tuning").glob("*/log.txt"))
    assert logs.count("the test set was not evaluated (eval.checkpoints=none)") == 4

    # the choice is the best mean validation PGD accuracy over the two tuning seeds
    means: dict[float, list[float]] = {}
    for r in tuning:
        means.setdefault(r.defense["params"]["step_size"], []).append(r.validation["val_pgd"])
    best = max(means, key=lambda s: statistics.fmean(means[s]))  # first listed on a tie, as in the file
    selection = json.loads((folder / "selection.json").read_text())
    pgd = selection["candidates"][0]
    assert pgd["chosen"] == {"defense.step_size": best} and selection["candidates"][1]["chosen"] is None
    assert [t["scores"] for t in pgd["trials"]] == [
        {str(s): v for s, v in sorted((r.seed, r.validation["val_pgd"]) for r in tuning
                                      if r.defense["params"]["step_size"] == step)} for step in (0.02, 0.05)]
    assert "**defense.step_size=" in (folder / "tuning.md").read_text()

    # the board holds the final runs only: the chosen setting and standard, fresh seed 0
    board, bad = load_records(results / "records")
    assert not bad and sorted((r.defense["name"], r.seed) for r in board) == [("pgd-at", 0), ("standard", 0)]
    assert next(r for r in board if r.defense["name"] == "pgd-at").defense["params"]["step_size"] == best
    assert all(r.evaluated for r in board)
    assert "from 2 run record(s)" in (results / "digits-linf-3_16.md").read_text()

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "4 recorded" in again.stdout and "nothing to run: every final run has its record" in again.stdout
    # the written final sweep repeats exactly the final runs
    replay = plan_sweep(load_sweep(folder / "final-sweep.yaml"), flags={"results_dir": str(results)})
    assert len(replay.points) == 2 and replay.todo == []

    # a validated-only record that lands among a board's records is left out, with why
    shutil.copy(next((folder / "records").rglob("*.json")), results / "records" / "digits" / "linf-3_16")
    _, skipped = refresh_leaderboard(results, "digits", "linf-3_16", "Linf eps=3/16")
    assert [s.reason for s in skipped] == ["no test evaluation (eval.checkpoints: none)"]
    assert "from 2 run record(s)" in (results / "digits-linf-3_16.md").read_text()


def test_a_diverged_tuning_run_counts_against_its_setting_and_is_not_trained_again(tmp_path: Path) -> None:
    """One setting's learning rate makes the loss NaN in the first epoch: the run exits 3,
    the tuning notes it beside its records, chooses the other setting, and a rerun
    neither trains it again nor waits for its record."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    spec = _tuning(config=str(REPO / "configs" / "digits" / "default.yaml"), tuning_seeds=[7],
                   candidates=[{"defense": "standard", "space": {"train.lr": [1.0e12, 0.05]}}],
                   set={"train.epochs": 1, "attacks": ["fgsm"], "eval.checks": False})
    args = ["tune", str(_write(tmp_path / "unstable.yaml", spec)), "--results-dir", str(results), "--runs-dir", str(runs)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "diverged  standard" in first.stderr and "became NaN or inf" in first.stderr
    folder = results / "tuning" / "unstable"
    (noted,) = json.loads((folder / "diverged.json").read_text())["runs"]
    assert noted["seed"] == 7 and "became NaN or inf in epoch 1" in noted["reason"]
    selection = json.loads((folder / "selection.json").read_text())["candidates"][0]
    assert selection["chosen"] == {"train.lr": 0.05}
    assert selection["trials"][0]["diverged"] == {"7": noted["reason"]} and selection["trials"][0]["mean"] is None
    assert "| standard | train.lr=1000000000000.0 | diverged | diverged |  |" in (folder / "tuning.md").read_text()
    board, _ = load_records(results / "records")
    assert [(r.seed, r.train["lr"]) for r in board] == [(0, 0.05)]

    again = run_cli(*args, "--dry-run")
    assert again.returncode == 0, again.stderr
    assert "0 recorded" not in again.stdout and "1 recorded, 1 diverged" in again.stdout
    assert "1/1" in again.stdout and "0/1 (1 diverged)" in again.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    file = _write(tmp_path / "t.yaml", _tuning(trials=5))
    proc = run_cli("tune", str(file), "--runs-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "for 5 trials" in lines[0] and "Traceback" not in proc.stderr
