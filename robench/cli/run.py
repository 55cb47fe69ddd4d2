"""``robench run``: train, evaluate, record."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from robench.cli.common import (
    ARCH_OPT,
    ATTACK_OPT,
    CONFIG_OPT,
    DATA_OPT,
    DATA_ROOT_OPT,
    DEVICE_OPT,
    EPOCHS_OPT,
    EPS_OPT,
    EPS_SWEEP_OPT,
    N_EVAL_OPT,
    NORM_OPT,
    QUIET_OPT,
    RUNS_DIR_OPT,
    SEED_OPT,
    SET_OPT,
    err,
    flag_layer,
    out,
    print_evaluation,
    print_other_checkpoint,
    progress,
)
from robench.cli.torchrun import NPROC_OPT, launch_torchrun

if TYPE_CHECKING:
    from robench.engine.checkpoint import Checkpoint
    from robench.results.records import RunRecord
    from robench.workflows.plans import RunPlan
    from robench.workflows.run import RunOutcome


# run's own options (the shared ones are in robench.cli.common)
_DEFENSE_OPT = typer.Option(None, "--defense", metavar="NAME", help="Defense plugin, e.g. pgd-at.")
_RESULTS_DIR_OPT = typer.Option(
    None, "--results-dir", metavar="DIR", help="Where records and leaderboards go (default: see README)."
)
_DOWNLOAD_OPT = typer.Option(False, "--download", help="Download the dataset if it is missing.")
_RESUME_OPT = typer.Option(
    None, "--resume", metavar="RUN", help="Continue an interrupted run (its id, folder or last.pt) with its own config.",
)
_PRECISION_OPT = typer.Option(
    None, "--precision", metavar="P", help="fp32, bf16 or fp16 (with loss scaling) for training; evaluation stays fp32.",
)
_CHANNELS_LAST_OPT = typer.Option(False, "--channels-last", help="Channels-last memory format (GPU tensor cores).")
_COMPILE_OPT = typer.Option(
    False, "--compile", help="torch.compile the training forward passes (UAD-AT's double backward stays eager).",
)
_LOGGER_OPT = typer.Option(
    None, "--logger", metavar="NAME",
    help="Also log to NAME (repeatable): tensorboard, wandb, mlflow or a plugin's (robench list logger); "
         "the JSON-lines epoch log is on by default.",
)


def run(
    config: Path | None = CONFIG_OPT,
    defense: str | None = _DEFENSE_OPT,
    arch: str | None = ARCH_OPT,
    data: str | None = DATA_OPT,
    attack: list[str] | None = ATTACK_OPT,
    eps: str | None = EPS_OPT,
    norm: str | None = NORM_OPT,
    epochs: int | None = EPOCHS_OPT,
    n_eval: int | None = N_EVAL_OPT,
    eps_sweep: bool = EPS_SWEEP_OPT,
    seed: int | None = SEED_OPT,
    device: str | None = DEVICE_OPT,
    data_root: Path | None = DATA_ROOT_OPT,
    results_dir: Path | None = _RESULTS_DIR_OPT,
    runs_dir: Path | None = RUNS_DIR_OPT,
    overrides: list[str] = SET_OPT,
    download: bool = _DOWNLOAD_OPT,
    resume: str | None = _RESUME_OPT,
    precision: str | None = _PRECISION_OPT,
    channels_last: bool = _CHANNELS_LAST_OPT,
    compile_model: bool = _COMPILE_OPT,
    logger: list[str] | None = _LOGGER_OPT,
    nproc: int | None = NPROC_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Train a model with a defense, evaluate it, record the run and refresh the leaderboard.

    With no options: PGD-AT on the embedded digits dataset with a small CNN (CPU, under a minute).
    """
    flags = flag_layer(
        attack=attack, eps=eps, norm=norm, n_eval=n_eval, eps_sweep=eps_sweep, seed=seed, device=device,
        data_root=data_root, runs_dir=runs_dir, defense=defense, arch=arch, data=data, epochs=epochs,
        download=download, results_dir=results_dir, precision=precision, channels_last=channels_last,
        compile_model=compile_model,
    )
    if resume is not None:
        plan, checkpoint = _plan_resume(resume, flags, config, overrides, nproc, logger or [])
    else:
        from robench.core.config import resolve, validate, with_loggers
        from robench.workflows.plans import plan_run

        plan, checkpoint = plan_run(validate(with_loggers(resolve(config, flags, overrides), logger or []))), None
    launch_torchrun(nproc, str(plan.device), plan.config.train.batch_size)  # every input is checked before processes start
    _print_start(plan, resumed=checkpoint is not None)
    outcome = _execute(plan, checkpoint, quiet)
    if outcome is not None:  # None: a torchrun rank other than 0, rank 0 reports
        _print_outcome(plan, outcome)


def _print_start(plan: RunPlan, *, resumed: bool) -> None:
    """What is about to run (a resumed run said so as it was planned) and where its files go."""
    if not resumed:
        procs = f", {plan.world.size} processes" if plan.world.active else ""
        out.print(
            f"[bold]robench run[/]: {plan.names['defense']} on {plan.names['data']} with "
            f"{plan.names['arch']}, {plan.threat}, seed {plan.config.seed}, {plan.device}{procs}"
        )
    out.print(Text(f"run folder:  {plan.run_dir}"), soft_wrap=True)


def _plan_resume(
    resume: str, flags: dict[str, Any], config: Path | None, overrides: list[str], nproc: int | None,
    loggers: list[str],
) -> tuple[RunPlan, Checkpoint]:
    """The plan of an interrupted run; only where and how it runs may change."""
    from robench.workflows.resume import RESUME_SETTINGS, plan_resume, resume_point

    changed = sorted(k for k in flags if k not in RESUME_SETTINGS)
    if config is not None or overrides or changed:
        given = ["--config"] * (config is not None) + ["--set"] * bool(overrides) + changed
        raise typer.BadParameter(
            f"continues a run with its own config; it cannot change {', '.join(given)}", param_hint="--resume"
        )
    plan, checkpoint = plan_resume(resume, flags, loggers)
    trained_on = (checkpoint.train_state or {}).get("world_size")
    if trained_on is not None and trained_on != (nproc or plan.world.size):
        raise typer.BadParameter(f"this run trained on {trained_on} process(es); resume it with --nproc {trained_on}",
                                 param_hint="--resume")
    out.print(Text(f"robench run --resume: {plan.run_id}, continuing after {resume_point(checkpoint)} "
                   f"({plan.config.train.epochs} epochs in all)"), soft_wrap=True)
    return plan, checkpoint


def _execute(plan: RunPlan, checkpoint: Checkpoint | None, quiet: bool) -> RunOutcome | None:
    """Train, evaluate and record; a stop or Ctrl-C names the command that continues."""
    from robench.engine.train import TrainingStopped
    from robench.workflows.run import execute

    try:
        with progress(quiet) as reporter:
            return execute(plan, reporter, resume=checkpoint)
    except TrainingStopped as stopped:
        if plan.world.is_main:
            err.print(Text(f"{stopped}; continue with: robench run --resume {plan.run_id}"), soft_wrap=True)
        raise typer.Exit(stopped.exit_code) from None
    except KeyboardInterrupt:
        if (plan.run_dir / "last.pt").is_file():
            err.print(Text(f"interrupted; continue with: robench run --resume {plan.run_id}"), soft_wrap=True)
        raise


def _print_outcome(plan: RunPlan, outcome: RunOutcome) -> None:
    rec = outcome.record
    if not rec.evaluated:
        _print_validation(rec, outcome)
        return
    print_evaluation(f"{rec.dataset}, {plan.threat}, {rec.selected} checkpoint (epoch "
                     f"{rec.checkpoints[rec.selected]['epoch']})", rec.accuracy, rec.eval)
    print_other_checkpoint(rec)
    out.print(f"test images: {rec.eval['n']}   wall time: {rec.wall_time_s:.1f} s")
    _print_paths(outcome)
    for skipped in outcome.skipped:
        err.print(Text(f"warning: skipped invalid record {skipped.path}: {skipped.reason}"))


def _print_validation(rec: RunRecord, outcome: RunOutcome) -> None:
    """A run that kept the test set unseen (``eval.checkpoints=none``): its validation scores."""
    val = rec.validation or {}
    scores = ", ".join(f"{k.removeprefix('val_')} {v:.2f}" for k, v in val.items() if k != "epoch" and v is not None)
    where = f"{rec.selected} checkpoint (epoch {val['epoch']})" if val else "no validation split"
    out.print(Text(f"validation, {where}: {scores or 'none'}; the test set was not evaluated (eval.checkpoints=none)"),
              soft_wrap=True)
    out.print(f"wall time: {rec.wall_time_s:.1f} s")
    _print_paths(outcome)


def _print_paths(outcome: RunOutcome) -> None:
    """Where the run's record, checkpoints and board (if it has one) are."""
    out.print(Text(f"record:      {outcome.record_path}"), soft_wrap=True)
    out.print(Text(f"checkpoints: {outcome.run_dir} (best.pt, last.pt, log.jsonl)"), soft_wrap=True)
    if outcome.leaderboard_path is not None:
        out.print(Text(f"leaderboard: {outcome.leaderboard_path}"), soft_wrap=True)
