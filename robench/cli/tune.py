"""``robench tune``: tune every defense with the same budget on validation, then run the board.

Stage 1 trains each candidate's trials with the tuning seeds, validated only, into
``<results>/tuning/<name>/``. When all of them are recorded, each candidate's best
setting by mean validation score is chosen and written down. Stage 2 trains the
chosen settings with fresh seeds, evaluated on the test set, into the board. Both
stages run on the sweep's local runner: rerun the same command to continue.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from robench.cli.common import DATA_ROOT_OPT, DEVICE_OPT
from robench.cli.sweep import (
    QUIET_BAR_OPT,
    absolute_path,
    err,
    out,
    refresh_boards,
    run_local,
    summarize,
    sweep_flags,
)

if TYPE_CHECKING:
    from robench.workflows.sweep.budget import Budget
    from robench.workflows.tune import TuningPlan
    from robench.workflows.tune.selection import Trial
    from robench.workflows.tune.spec import TuneSpec


# tune's options; --device and --data-root are run's (robench.cli.common), --quiet is sweep's
_FILE_ARG = typer.Argument(..., metavar="TUNING_FILE", help="YAML tuning file (configs/tuning/).")
_RESULTS_DIR_OPT = typer.Option(
    None, "--results-dir", metavar="DIR", help="The board's folder; tuning records go to <DIR>/tuning/<name>/."
)
_RUNS_DIR_OPT = typer.Option(None, "--runs-dir", metavar="DIR", help="Runs root; runs go to <DIR>/sweeps/.")
_JOBS_OPT = typer.Option(1, "--jobs", "-j", metavar="N", min=1, help="Runs at the same time.")
_BUDGET_OPT = typer.Option(
    None, "--budget", metavar="MINUTES", min=0.01,
    help="Start no run that its records here say cannot finish in the time left; stop (resumably) at the end.",
)
_TUNE_ONLY_OPT = typer.Option(False, "--tune-only", help="Stop after choosing the settings; run no final runs.")
_DRY_RUN_OPT = typer.Option(False, "--dry-run", help="Show the trials, what is recorded and the choice so far.")


def tune(
    tuning_file: Path = _FILE_ARG,
    device: str | None = DEVICE_OPT,
    data_root: Path | None = DATA_ROOT_OPT,
    results_dir: Path | None = _RESULTS_DIR_OPT,
    runs_dir: Path | None = _RUNS_DIR_OPT,
    jobs: int = _JOBS_OPT,
    budget: float | None = _BUDGET_OPT,
    tune_only: bool = _TUNE_ONLY_OPT,
    dry_run: bool = _DRY_RUN_OPT,
    quiet: bool = QUIET_BAR_OPT,
) -> None:
    """Tune each defense's hyperparameters with the same number of trials, on validation only,
    then train the chosen settings with fresh seeds for the leaderboard.

    Safe to rerun: recorded runs are skipped, interrupted ones resume.
    """
    from robench.core.paths import runs_root
    from robench.core.provenance import git_commit
    from robench.workflows.sweep.budget import Budget
    from robench.workflows.tune import gather, plan_tuning
    from robench.workflows.tune.divergence import diverged_noter
    from robench.workflows.tune.spec import load_tuning

    spec = load_tuning(tuning_file)
    flags, runs = sweep_flags(device, data_root, results_dir), absolute_path(runs_dir)
    plan = plan_tuning(spec, flags, runs)
    _print_plan(spec, plan)
    clock = Budget(budget * 60) if budget is not None else None
    if dry_run:
        _show(spec, plan, gather(spec, plan))
        return
    if plan.todo:
        commit = git_commit(outputs=(plan.folder.parents[1], runs_root()))  # <results>/tuning/<name>
        results = run_local(plan.todo, jobs, None, quiet, clock, on_result=diverged_noter(plan.folder, commit))
        summarize(results, outcomes=("diverged",))
    trials = gather(spec, plan)
    missing = sum(len(spec.tuning_seeds) - len(t.scores) - len(t.diverged) for ts in trials.values() for t in ts)
    if missing:
        err.print(Text(f"tuning not finished: {missing} run(s) have no record yet; rerun the same command to continue"),
                  soft_wrap=True)
        return
    chosen = _choose(spec, plan, trials)
    if not tune_only:
        _final(spec, plan, chosen, flags, runs, jobs, quiet, clock)


def _print_plan(spec: TuneSpec, plan: TuningPlan) -> None:
    """How many tuning runs there are, how many are recorded or diverged, and what follows."""
    diverged = sum((p.config_hash, p.seed) in plan.diverged for p in plan.points)
    recorded = len(plan.points) - len(plan.todo) - diverged
    out.print(Text(f"robench tune {spec.name}: {len(plan.trials)} trial(s) x {len(spec.tuning_seeds)} seed(s) = "
                   f"{len(plan.points)} tuning run(s), {recorded} recorded{f', {diverged} diverged' if diverged else ''}; "
                   f"then {len(spec.candidates) * len(spec.final_seeds)} final run(s); tuning records in {plan.folder}"),
              soft_wrap=True)


def _choose(spec: TuneSpec, plan: TuningPlan, trials: dict[str, list[Trial]]) -> dict[str, Trial]:
    from robench.workflows.tune.selection import SUMMARY_FILE, choose, write_selection

    chosen = {label: choose(ts) for label, ts in trials.items()}
    write_selection(plan.folder, spec, trials, chosen)
    table = Table(title=f"chosen by validation {spec.score} (mean over seeds {', '.join(map(str, spec.tuning_seeds))})")
    for column in ("candidate", "setting", "mean", "std", "runner-up"):
        table.add_column(column, overflow="fold")
    for c in spec.candidates:
        best = chosen.get(c.label)
        if best is None:
            table.add_row(c.label, "(not tuned)", "", "", "")
            continue
        others = sorted((t for t in trials[c.label] if t is not best and not t.diverged), key=lambda t: -t.mean)
        table.add_row(c.label, _setting(best.setting), f"{best.mean:.2f}", f"{best.std:.2f}",
                      f"{others[0].mean:.2f} ({_setting(others[0].setting)})" if others else "")
    out.print(table)
    out.print(Text(f"every trial: {plan.folder / SUMMARY_FILE}"), soft_wrap=True)
    return chosen


def _setting(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def _final(spec: TuneSpec, plan: TuningPlan, chosen: dict[str, Trial], flags: dict[str, Any], runs: str | None,
           jobs: int, quiet: bool, clock: Budget | None) -> None:
    from robench.workflows.sweep.plan import plan_sweep
    from robench.workflows.tune.selection import FINAL_SWEEP_FILE, chosen_settings, write_final_sweep
    from robench.workflows.tune.spec import final_sweep

    sweep = final_sweep(spec, chosen_settings(chosen, spec.candidates))
    path = write_final_sweep(plan.folder / FINAL_SWEEP_FILE, sweep)
    final = plan_sweep(sweep, flags=flags, runs_dir=runs)
    out.print(Text(f"final runs: {len(final.points)}, {len(final.recorded)} recorded already; the same runs as "
                   f"`robench sweep {path}`"), soft_wrap=True)
    results = run_local(final.todo, jobs, None, quiet, clock) if final.todo else []
    refresh_boards(final)
    if final.todo:
        summarize(results)
    else:
        out.print("nothing to run: every final run has its record")


def _show(spec: TuneSpec, plan: TuningPlan, trials: dict[str, list[Trial]]) -> None:
    """The dry run: each trial, how many of its seeds are recorded, its score so far."""
    table = Table(title=f"trials (tuning records in {plan.folder})")
    for column in ("candidate", "setting", "recorded", f"mean {spec.score}"):
        table.add_column(column, overflow="fold")
    for c in spec.candidates:
        for t in trials.get(c.label, ()):
            lost = f" ({len(t.diverged)} diverged)" if t.diverged else ""
            table.add_row(c.label, _setting(t.setting), f"{len(t.scores)}/{len(spec.tuning_seeds)}{lost}",
                          f"{t.mean:.2f}" if t.scores else "")
        if not c.trials:
            table.add_row(c.label, "(not tuned)", "", "")
    out.print(table)
