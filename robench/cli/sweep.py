"""``robench sweep``: a grid of runs from a sweep file or flags, run once each.

Planning checks every point first. Points already recorded are skipped, cut-short
ones resume, and the others run locally (one after another, or ``--jobs`` at a time)
or as Slurm jobs through submitit.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from robench.api.errors import RobenchError, UserError
from robench.cli.common import DATA_ROOT_OPT, DEVICE_OPT

if TYPE_CHECKING:
    from robench.workflows.sweep.budget import Budget
    from robench.workflows.sweep.grid import SweepSpec
    from robench.workflows.sweep.slurm import SlurmOptions

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RUNNERS = ("local", "slurm", "submitit-local")


def _values(text: str, option: str) -> tuple[str, tuple[Any, ...]]:
    """``KEY=V1,V2`` (or ``KEY=[V1, V2]``) as a grid axis."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise UserError(f"{option} expects KEY=VALUE1,VALUE2,..., got {text!r}")
    try:
        parsed = yaml.safe_load(raw)
        values = parsed if isinstance(parsed, list) else [yaml.safe_load(v) if v.strip() else v
                                                         for v in raw.split(",")]
    except (yaml.YAMLError, ValueError):
        values = raw.split(",")
    return key.strip(), tuple(values)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UserError(f"--seeds expects non-negative integers, got {text!r}")
    return seeds


def _slurm_extra(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-arg expects KEY=VALUE (an sbatch option without its dashes), got {item!r}")
        extra[key.strip().lstrip("-").replace("-", "_")] = value.strip()
    return extra


def _accuracy(result: Any) -> str:
    acc = result.accuracy or {}
    return f"clean {acc['clean']:.2f}, worst case {acc['worst case']:.2f}" if "clean" in acc else ""


# sweep's options; --device and --data-root are run's (robench.cli.common), passed to every run
_FILE_ARG = typer.Argument(None, metavar="[SWEEP_FILE]", help="YAML sweep file (configs/sweeps/).")
# the grid's axes
_DEFENSE_OPT = typer.Option(None, "--defense", metavar="NAME", help="Defense axis; repeat.")
_ARCH_OPT = typer.Option(None, "--arch", metavar="NAME", help="Architecture axis; repeat.")
_DATA_OPT = typer.Option(None, "--data", metavar="NAME", help="Dataset axis; repeat.")
_SEEDS_OPT = typer.Option(None, "--seeds", metavar="LIST", help="Seed axis, e.g. 0,1,2.")
_GRID_OPT = typer.Option(
    [], "--grid", metavar="KEY=V1,V2", help="Any config key as an axis, e.g. defense.beta=1,6; repeat."
)
# what every run shares
_CONFIG_OPT = typer.Option(
    None, "--config", "-c", metavar="FILE", help="Base run config (replaces the sweep file's).", show_default=False
)
_ATTACK_OPT = typer.Option(None, "--attack", metavar="NAME", help="Evaluation suite for every run; repeat.")
_EPOCHS_OPT = typer.Option(None, "--epochs", metavar="N", min=1, help="Training epochs of every run.")
_SET_OPT = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="A value for every run; repeat.")
_NAME_OPT = typer.Option(None, "--name", metavar="NAME", help="Sweep name (folder under <runs>/sweeps).")
_RESULTS_DIR_OPT = typer.Option(None, "--results-dir", metavar="DIR", help="Where records and leaderboards go.")
_RUNS_DIR_OPT = typer.Option(None, "--runs-dir", metavar="DIR", help="Runs root; points go to <DIR>/sweeps/<name>/.")
# how the runs run
_RUNNER_OPT = typer.Option("local", "--runner", metavar="RUNNER", help="local, slurm (submitit) or submitit-local.")
_JOBS_OPT = typer.Option(1, "--jobs", "-j", metavar="N", min=1, help="Local runner: runs at the same time.")
_NPROC_OPT = typer.Option(None, "--nproc", metavar="N", min=1, help="Processes (GPUs) per run, via torchrun.")
_PARTITION_OPT = typer.Option(None, "--partition", metavar="NAME", help="Slurm partition.")
_TIME_MIN_OPT = typer.Option(
    24 * 60, "--time-min", metavar="MIN", min=1, help="Slurm time limit per job; requeued runs resume."
)
_CPUS_OPT = typer.Option(None, "--cpus-per-task", metavar="N", min=1, help="Slurm CPUs per job.")
_SLURM_ARG_OPT = typer.Option(
    [], "--slurm-arg", metavar="KEY=VALUE", help="Another sbatch option, e.g. account=abc; repeat."
)
_WAIT_OPT = typer.Option(False, "--wait", help="Slurm: wait for the jobs and report them (submitit-local always waits).")
_BUDGET_OPT = typer.Option(
    None, "--budget", metavar="MINUTES", min=0.01,
    help="Local runner: start no run that its records here say cannot finish in the time left; stop (resumably) at the end.",
)
_DRY_RUN_OPT = typer.Option(False, "--dry-run", help="Show the runs and what would happen to each; run nothing.")
#: sweep's and tune's --quiet: their one progress bar
QUIET_BAR_OPT = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def sweep(
    sweep_file: Path | None = _FILE_ARG,
    defense: list[str] | None = _DEFENSE_OPT,
    arch: list[str] | None = _ARCH_OPT,
    data: list[str] | None = _DATA_OPT,
    seeds: str | None = _SEEDS_OPT,
    grid: list[str] = _GRID_OPT,
    config: Path | None = _CONFIG_OPT,
    attack: list[str] | None = _ATTACK_OPT,
    epochs: int | None = _EPOCHS_OPT,
    overrides: list[str] = _SET_OPT,
    name: str | None = _NAME_OPT,
    device: str | None = DEVICE_OPT,
    data_root: Path | None = DATA_ROOT_OPT,
    results_dir: Path | None = _RESULTS_DIR_OPT,
    runs_dir: Path | None = _RUNS_DIR_OPT,
    runner: str = _RUNNER_OPT,
    jobs: int = _JOBS_OPT,
    nproc: int | None = _NPROC_OPT,
    partition: str | None = _PARTITION_OPT,
    time_min: int = _TIME_MIN_OPT,
    cpus_per_task: int | None = _CPUS_OPT,
    slurm_arg: list[str] = _SLURM_ARG_OPT,
    wait: bool = _WAIT_OPT,
    budget: float | None = _BUDGET_OPT,
    dry_run: bool = _DRY_RUN_OPT,
    quiet: bool = QUIET_BAR_OPT,
) -> None:
    """Run a grid of defenses x architectures x datasets x seeds x hyperparameters, each run once.

    Runs whose record exists are skipped, interrupted ones resume: rerun the same
    command to finish a sweep. The leaderboards are refreshed at the end.
    """
    _check_runner(runner, jobs, budget)
    spec = _spec(sweep_file, name, config, [("defense", defense), ("arch", arch), ("data", data)],
                 seeds, grid, attack, epochs, overrides)
    slurm = _slurm_options(runner, nproc, cpus_per_task, time_min, partition, slurm_arg)
    _run_sweep(spec, runner, jobs, nproc, dry_run, quiet, sweep_flags(device, data_root, results_dir),
               absolute_path(runs_dir), slurm, wait, budget)


def _check_runner(runner: str, jobs: int, budget: float | None) -> None:
    """--jobs and --budget are the local runner's: Slurm schedules the jobs itself."""
    if runner not in RUNNERS:
        raise UserError(f"--runner {runner!r}: use one of {', '.join(RUNNERS)}")
    if runner != "local" and jobs != 1:
        raise UserError("--jobs is for the local runner; Slurm runs every job it can")
    if runner != "local" and budget is not None:
        raise UserError("--budget is for the local runner; Slurm jobs have --time-min")


def _slurm_options(
    runner: str, nproc: int | None, cpus_per_task: int | None, time_min: int, partition: str | None,
    slurm_arg: list[str],
) -> SlurmOptions:
    """The Slurm options, which every runner is given (the local one ignores them)."""
    from robench.workflows.sweep.slurm import SlurmOptions  # submitit itself is imported only to submit

    return SlurmOptions(cluster="local" if runner == "submitit-local" else "slurm", gpus=nproc or 0,
                        cpus_per_task=cpus_per_task, timeout_min=time_min, partition=partition,
                        extra=_slurm_extra(slurm_arg))


def _spec(
    sweep_file: Path | None, name: str | None, config: Path | None, named_axes: list[tuple[str, Sequence[Any] | None]],
    seeds: str | None, grid: list[str], attack: list[str] | None, epochs: int | None, overrides: list[str],
) -> SweepSpec:
    """The sweep file (or an empty sweep) with the command line's axes and values laid over it."""
    from robench.workflows.sweep.grid import CONFIG_AXIS, Axis, SweepSpec, config_files, layer_items, load_sweep, override

    spec = load_sweep(sweep_file) if sweep_file is not None else SweepSpec(name or "sweep", None, ())
    axes: list[Axis] = [(k, tuple(v)) for k, v in named_axes if v]
    if seeds is not None:
        axes.append(("seed", _seeds(seeds)))
    for item in grid:
        key, values = _values(item, "--grid")
        axes.append((key, config_files(values, Path.cwd(), "--grid") if key == CONFIG_AXIS else values))
    fixed = layer_items({**({"attacks": list(attack)} if attack else {}),
                         **({"train.epochs": epochs} if epochs is not None else {})}, "command line")
    spec = override(spec, axes, [*fixed, *overrides])
    if config is not None:
        spec = replace(spec, config=config.resolve())
    if name is not None:
        spec = replace(spec, name=name)
    return spec


def pin_default_folders() -> None:
    """The default ./robench-results of the folder the sweep started in, for every run
    wherever its process starts (below flags and config files, as the variables are)."""
    from robench.core.paths import results_root, runs_root

    os.environ.setdefault("ROBENCH_RESULTS", str(results_root()))
    os.environ.setdefault("ROBENCH_RUNS", str(runs_root()))


def absolute_path(path: Path | None) -> str | None:
    """Jobs may start in another folder: paths go to them absolute."""
    return str(path.expanduser().resolve()) if path is not None else None


def sweep_flags(device: str | None, data_root: Path | None, results_dir: Path | None) -> dict[str, Any]:
    """The options that sweep and tune pass on to every run, with the default folders pinned
    first (see :func:`pin_default_folders`)."""
    pin_default_folders()
    flags = {"device": device, "data_root": absolute_path(data_root), "results_dir": absolute_path(results_dir)}
    return {k: v for k, v in flags.items() if v is not None}


def _run_sweep(spec: Any, runner: str, jobs: int, nproc: int | None, dry_run: bool, quiet: bool,
               flags: dict[str, Any], runs_dir: str | None, slurm: SlurmOptions, wait_for_jobs: bool,
               budget_min: float | None = None) -> None:
    from robench.workflows.sweep.budget import Budget
    from robench.workflows.sweep.plan import plan_sweep
    from robench.workflows.sweep.point import unfinished_run

    plan = plan_sweep(spec, flags=flags, runs_dir=runs_dir, nproc=nproc)
    todo = plan.todo
    resumable = {p.key: unfinished_run(p.folder) for p in todo}
    n_resume = sum(1 for r in resumable.values() if r is not None)
    dup = f", {plan.duplicates} repeated grid point(s) dropped" if plan.duplicates else ""
    out.print(Text(f"robench sweep {spec.name}: {len(plan.points)} run(s): {len(plan.recorded)} recorded already, "
                   f"{n_resume} to resume, {len(todo) - n_resume} to start{dup}"), soft_wrap=True)
    if dry_run:
        table = Table(title=f"runs in {plan.points[0].folder.parent}" if plan.points else None)
        for column in ("run", "status", "folder"):
            table.add_column(column, overflow="fold")
        for p in plan.points:
            status = "recorded" if p.key in plan.recorded else ("resume" if resumable.get(p.key) else "start")
            table.add_row(p.label, status, p.key)
        out.print(table)
        return
    if not todo:
        out.print("nothing to run: every run of this sweep has its record")
        return

    results: list[Any] = []
    if runner == "local":
        results = run_local(todo, jobs, nproc, quiet, Budget(budget_min * 60) if budget_min is not None else None)
    else:
        from robench.workflows.sweep.slurm import submit, wait

        folder = todo[0].folder.parent / "submitit"
        handles = submit(todo, folder, spec.name, slurm)
        out.print(Text(f"submitted {len(handles)} job(s) ({', '.join(str(h.job_id) for h in handles[:5])}"
                       f"{', ...' if len(handles) > 5 else ''}); job logs in {folder}"), soft_wrap=True)
        if runner == "slurm" and not wait_for_jobs:
            out.print("each run records itself and refreshes its leaderboard; rerun this command to see what is left")
            return
        results = wait(handles, todo, report_point)

    refresh_boards(plan)
    summarize(results)


def refresh_boards(plan: Any) -> None:
    """Every record is in: one last rebuild of each board the sweep touched."""
    from robench.results.leaderboard import refresh_leaderboard

    for board in plan.boards:
        path, _ = refresh_leaderboard(board.results_root, board.dataset, board.threat.slug, str(board.threat))
        out.print(Text(f"leaderboard: {path}"), soft_wrap=True)


def report_point(point: Any, result: Any) -> None:
    from robench.workflows.sweep.point import UNRECORDED

    if result.status in ("done", "resumed", "recorded"):
        out.print(Text(f"{result.status:>8}  {point.label}: {_accuracy(result)}"), soft_wrap=True)
    elif result.status == "busy":
        err.print(Text(f"    busy  {point.label}: running in another process (its lock is held); skipped"), soft_wrap=True)
    elif result.status == "not started" and result.reason:
        err.print(Text(f" skipped  {point.label}: {result.reason}"), soft_wrap=True)
    elif result.status in UNRECORDED:
        err.print(Text(f"{result.status:>8}  {point.label}: exit {result.exit_code}: {result.reason} (log: {result.log})"),
                  soft_wrap=True)


def run_local(todo: list[Any], jobs: int, nproc: int | None, quiet: bool, budget: Budget | None,
              on_result: Callable[[Any, Any], None] | None = None) -> list[Any]:
    """Run the points here with a progress bar; a stop signal exits (resumably), a spent
    budget leaves out what it stopped or never started. ``on_result(point, result)``
    hears of each result as it lands, before any stop."""
    from robench.workflows.sweep.local import LocalRunner

    local = LocalRunner(jobs=jobs, gpus_each=nproc or 1, budget=budget)
    progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, disable=quiet)
    with progress:
        task = progress.add_task("sweep", total=len(todo))

        def done(point: Any, result: Any) -> None:
            report_point(point, result)
            if on_result is not None:
                on_result(point, result)
            progress.advance(task)

        results = local.run(todo, done)
    if local.stop_signal is not None:
        import signal

        stopped = sum(r.status == "stopped" for r in results)
        err.print(Text(f"sweep stopped by {signal.Signals(local.stop_signal).name}: {stopped} run(s) saved a checkpoint, "
                       f"{sum(r.status == 'not started' for r in results)} not started; rerun the same command to continue"),
                  soft_wrap=True)
        raise typer.Exit(128 + local.stop_signal)
    if budget is not None:
        results = budget_summary(results, local.out_of_time, budget.seconds / 60)
    return results


def budget_summary(results: list[Any], out_of_time: bool, minutes: float) -> list[Any]:
    """Say what the budget left undone; runs it stopped or never started are not failures."""
    unstarted = [r for r in results if r.status == "not started"]
    stopped = [r for r in results if r.status == "stopped"] if out_of_time else []
    if unstarted or stopped:
        err.print(Text(f"budget of {minutes:g} min: {len(stopped)} run(s) stopped at its end with a checkpoint, "
                       f"{len(unstarted)} not started; rerun the same command to continue"), soft_wrap=True)
    return [r for r in results if r not in unstarted and r not in stopped]


class SweepFailed(RobenchError):
    """Some runs failed; their logs say why (exit 1: not the sweep's input)."""


def summarize(results: list[Any], outcomes: tuple[str, ...] = ()) -> None:
    """Count the results by status; fail if any run failed (a status in ``outcomes``, such as
    a tuning's diverged runs, is a result rather than a failure)."""
    from robench.workflows.sweep.point import UNRECORDED

    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    out.print("sweep: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    failed = [r for r in results if r.status in UNRECORDED and r.status not in outcomes]
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(results)} run(s) failed; first log: {failed[0].log}")
