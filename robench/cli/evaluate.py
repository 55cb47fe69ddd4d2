"""``robench eval``: evaluate a saved model with the full protocol."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from robench.cli.common import (
    ATTACK_OPT,
    CONFIG_OPT,
    DATA_ROOT_OPT,
    DEVICE_OPT,
    EPS_OPT,
    EPS_SWEEP_OPT,
    N_EVAL_OPT,
    NORM_OPT,
    QUIET_OPT,
    RUNS_DIR_OPT,
    SET_OPT,
    flag_layer,
    out,
    print_evaluation,
    progress,
)

if TYPE_CHECKING:
    from robench.workflows.evaluate import EvalPlan


# eval's own options (the shared ones are in robench.cli.common): what to evaluate
_CHECKPOINT_OPT = typer.Option(
    None, "--checkpoint", metavar="PATH", help="A best.pt or last.pt written by robench run.", show_default=False
)
_WEIGHTS_OPT = typer.Option(
    None, "--weights", metavar="FILE", show_default=False,
    help="Instead: a plain state dict of the network (official checkpoints), with --arch and --data.",
)
_MODEL_OPT = typer.Option(
    None, "--model", metavar="PKG.MOD:FACTORY", show_default=False,
    help="Instead: a function of yours that returns the network (inputs in [0, 1]), with --data; "
    "--weights then loads into it.",
)
_ARCH_OPT = typer.Option(None, "--arch", metavar="NAME", help="With --weights: the architecture.")
_DATA_OPT = typer.Option(None, "--data", metavar="NAME", help="With --weights or --model: the dataset.")
_SEED_OPT = typer.Option(None, "--seed", metavar="N", help="Attack seed; default: the run's.")
_RESULTS_DIR_OPT = typer.Option(
    None, "--results-dir", metavar="DIR",
    help="Results folder whose records and boards the report joins (default: see README).",
)
_OUT_OPT = typer.Option(None, "--out", metavar="FILE", help="Report path instead (boards do not read it).")


def eval_checkpoint(
    checkpoint: Path | None = _CHECKPOINT_OPT,
    weights: Path | None = _WEIGHTS_OPT,
    model: str | None = _MODEL_OPT,
    arch: str | None = _ARCH_OPT,
    data: str | None = _DATA_OPT,
    config: Path | None = CONFIG_OPT,
    attack: list[str] | None = ATTACK_OPT,
    eps: str | None = EPS_OPT,
    norm: str | None = NORM_OPT,
    n_eval: int | None = N_EVAL_OPT,
    eps_sweep: bool = EPS_SWEEP_OPT,
    seed: int | None = _SEED_OPT,
    device: str | None = DEVICE_OPT,
    data_root: Path | None = DATA_ROOT_OPT,
    runs_dir: Path | None = RUNS_DIR_OPT,
    results_dir: Path | None = _RESULTS_DIR_OPT,
    out_file: Path | None = _OUT_OPT,
    overrides: list[str] = SET_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Evaluate a saved model: clean, FGSM, PGD-20, CW-20, AutoAttack, plus robench's checks.

    A robench checkpoint brings its model, data and threat model; weights robench did not
    save (--weights, e.g. the official TRADES WRN-34-10) need --arch and --data, and
    --set data.normalize=false where they were trained on raw [0, 1] inputs. Any other
    network: --model my_models:build --data cifar10 (your function, imported from the
    current folder), optionally with --weights. Rerun the same command after an
    interruption to resume (AutoAttack included).
    """
    from robench.workflows.evaluate import execute_eval, plan_eval

    flags = flag_layer(attack=attack, eps=eps, norm=norm, n_eval=n_eval, eps_sweep=eps_sweep, seed=seed,
                       device=device, data_root=data_root, runs_dir=runs_dir, results_dir=results_dir)
    source = _model_source(model, checkpoint, arch, data, weights, flags) if model is not None \
        else _eval_source(checkpoint, weights, arch, data, flags)
    plan = plan_eval(source, config_file=config, flags=flags, overrides=overrides, out=out_file)
    _print_start(plan)
    with progress(quiet) as reporter:
        report, path, _, board = execute_eval(plan, reporter)
    print_evaluation(f"{report.dataset}, {plan.run.threat}", report.accuracy, report.eval)
    out.print(f"test images: {report.eval['n']}   wall time: {report.wall_time_s:.1f} s")
    out.print(Text(f"report: {path}"), soft_wrap=True)
    if board is not None:
        out.print(Text(f"leaderboard: {board}"), soft_wrap=True)


def _print_start(plan: EvalPlan) -> None:
    """What is evaluated, on what, against how many attacks, where."""
    run_plan, source = plan.run, plan.source
    what = source.run_id or (source.label if source.factory else f"weights {source.path.name}")
    out.print(Text(
        f"robench eval: {what} ({run_plan.names['arch']} on {run_plan.names['data']}), "
        f"{run_plan.threat}, {len(run_plan.suite)} attack(s), {run_plan.device}"
    ), soft_wrap=True)


def _model_source(
    model: str, checkpoint: Path | None, arch: str | None, data: str | None, weights: Path | None,
    flags: dict[str, Any],
) -> Any:
    """The user's factory (and weights for it), evaluated on ``data`` as it is: inputs in [0, 1]."""
    from robench.core.config import NORMALIZE_KEY
    from robench.workflows.evaluate import EvalSource

    if checkpoint is not None or arch is not None:
        raise typer.BadParameter("--model builds its own network; --checkpoint and --arch go without it",
                                 param_hint="--model")
    if data is None:
        raise typer.BadParameter("--model needs --data (the dataset the network classifies)", param_hint="--model")
    flags["data"] = {"name": data, NORMALIZE_KEY: False}  # the factory's network takes [0, 1] inputs
    return EvalSource.from_factory(model, weights)


def _eval_source(
    checkpoint: Path | None, weights: Path | None, arch: str | None, data: str | None,
    flags: dict[str, Any],
) -> Any:
    """The checkpoint, or the weights with the architecture and dataset put into ``flags``."""
    from robench.workflows.evaluate import EvalSource

    if (checkpoint is None) == (weights is None):
        raise typer.BadParameter("give --checkpoint PATH (written by robench run) or --weights FILE "
                                 "(a plain state dict, with --arch and --data)", param_hint="--checkpoint")
    if checkpoint is not None:
        if arch is not None or data is not None:
            raise typer.BadParameter("a checkpoint names its own architecture and dataset; "
                                     "--arch and --data go with --weights", param_hint="--arch/--data")
        return EvalSource.checkpoint(checkpoint)
    if arch is None or data is None:
        raise typer.BadParameter("--weights needs --arch and --data (the network and dataset it was trained for)",
                                 param_hint="--weights")
    assert weights is not None  # exactly one of the two, checked first
    flags["arch"], flags["data"] = {"name": arch}, {"name": data}
    return EvalSource.weights(weights)
