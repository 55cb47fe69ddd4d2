"""``robench ablate``: a defense with its components switched off, over seeds."""
from __future__ import annotations

from pathlib import Path

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
    N_EVAL_OPT,
    NORM_OPT,
    QUIET_OPT,
    RUNS_DIR_OPT,
    SET_OPT,
    flag_layer,
    out,
    progress,
)

# ablate's own options (the shared ones are in robench.cli.common)
_DEFENSE_OPT = typer.Option(..., "--defense", metavar="NAME", help="Defense to ablate, e.g. uadat.")
_OFF_OPT = typer.Option(
    [], "--off", metavar="PARAM", help="A component switch (boolean hyperparameter) to turn off; repeat."
)
_VARY_OPT = typer.Option(
    [], "--vary", metavar="PARAM=VALUE", help="Another setting of one parameter as its own variant; repeat."
)
_SEEDS_OPT = typer.Option("0,1,2", "--seeds", metavar="LIST", help="Comma-separated seeds.")
_RESULTS_DIR_OPT = typer.Option(
    None, "--results-dir", metavar="DIR", help="Where the ablation's records go (default: <results>/ablations/<defense>)."
)


def ablate(
    defense: str = _DEFENSE_OPT,
    off: list[str] = _OFF_OPT,
    vary: list[str] = _VARY_OPT,
    seeds: str = _SEEDS_OPT,
    config: Path | None = CONFIG_OPT,
    arch: str | None = ARCH_OPT,
    data: str | None = DATA_OPT,
    attack: list[str] | None = ATTACK_OPT,
    eps: str | None = EPS_OPT,
    norm: str | None = NORM_OPT,
    epochs: int | None = EPOCHS_OPT,
    n_eval: int | None = N_EVAL_OPT,
    device: str | None = DEVICE_OPT,
    data_root: Path | None = DATA_ROOT_OPT,
    results_dir: Path | None = _RESULTS_DIR_OPT,
    runs_dir: Path | None = RUNS_DIR_OPT,
    overrides: list[str] = SET_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Ablate a defense: the full method, each named component off, all off, and each varied setting, over seeds.

    Every variant is an ordinary run; the results folder's leaderboard is the ablation
    table. Rerun the same command to finish an interrupted ablation.
    """
    from robench.api.errors import UserError
    from robench.workflows.ablate import plan_ablation
    from robench.workflows.run import execute

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers such as 0,1,2, got {seeds!r}") from None
    flags = flag_layer(attack=attack, eps=eps, norm=norm, n_eval=n_eval, device=device, data_root=data_root,
                       runs_dir=runs_dir, arch=arch, data=data, epochs=epochs)
    plan = plan_ablation(defense, off, seed_list, config_file=config, flags=flags, overrides=overrides,
                         results_dir=str(results_dir) if results_dir else None, varied=vary)
    out.print(Text(f"robench ablate: {defense}, {len(plan.runs)} run(s) to do, {len(plan.done)} already "
                   f"recorded, into {plan.results}"), soft_wrap=True)
    board = None
    for i, (variant, seed, run_plan) in enumerate(plan.runs, 1):
        out.print(f"[{i}/{len(plan.runs)}] {variant.label}, seed {seed}")
        with progress(quiet) as reporter:
            outcome = execute(run_plan, reporter)
        if outcome is None:  # a torchrun rank other than 0
            continue
        acc = outcome.record.accuracy
        out.print(f"  clean {acc['clean']:.2f}, worst case {acc['worst case']:.2f}")
        board = outcome.leaderboard_path
    if board is not None:
        out.print(Text(f"ablation table: {board}"), soft_wrap=True)
