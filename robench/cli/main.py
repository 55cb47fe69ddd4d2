"""The ``robench`` command line (Typer, rich output).

Exit codes: 0 ok, 2 bad input (one line on stderr, no traceback), 1 internal failure.
Set ``ROBENCH_DEBUG=1`` to see the traceback of an internal failure.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import robench
from robench.cli.bench import bench
from robench.cli.boards import leaderboard, plot_app
from robench.cli.new import new
from robench.cli.sweep import sweep
from robench.api.errors import RobenchError, one_line

if TYPE_CHECKING:
    from robench.results.records import RunRecord

out = Console(highlight=False)
# soft_wrap: an error stays one line however narrow the terminal
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Typer >= 0.20 vendors click as typer._click; take the exception classes from whichever
# click this Typer uses rather than from a separately installed one.
_click_exc = importlib.import_module(typer.BadParameter.__module__)
_EXIT = tuple({typer.Exit, getattr(_click_exc, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(_click_exc, "Abort", typer.Abort)})

app = typer.Typer(
    help="Train, attack and rank adversarially robust image classifiers.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

KIND_ALIASES = {
    "defense": "defense", "defenses": "defense", "defence": "defense", "defences": "defense",
    "architecture": "architecture", "architectures": "architecture", "arch": "architecture",
    "archs": "architecture", "dataset": "dataset", "datasets": "dataset", "data": "dataset",
    "attack": "attack", "attacks": "attack",
}


def _version(value: bool) -> None:
    if value:
        out.print(f"robench {robench.__version__} (plugin API {robench.api_version})")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Train, attack and rank adversarially robust image classifiers.

    Start with `robench run` (PGD adversarial training on the embedded digits
    dataset, under a minute on a laptop CPU) and `robench list` (installed plugins).
    """
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())
    if _other_rank():  # under torchrun, rank 0 alone talks
        out.quiet = True


_CONFIG_OPT = typer.Option(
    None, "--config", "-c", metavar="FILE", help="YAML config; flags and --set override it.", show_default=False
)
_ATTACK_OPT = typer.Option(
    None, "--attack", metavar="NAME",
    help="Evaluation attack, e.g. pgd-50; repeat for a suite (replaces the configured one).",
)
_EPS_OPT = typer.Option(None, "--eps", metavar="EPS", help='Exact budget, e.g. "8/255"; default: the dataset\'s.')
_NORM_OPT = typer.Option(None, "--norm", metavar="NORM", help="Linf or L2; default: the dataset's.")
_N_EVAL_OPT = typer.Option(None, "--n-eval", metavar="N", help="Evaluate on a fixed-seed subset of N test images.")
_SWEEP_OPT = typer.Option(False, "--eps-sweep", help="Also record PGD-20 accuracy at 0 to 2x eps (for plots).")
_SEED_OPT = typer.Option(None, "--seed", metavar="N", help="Seed for everything random.")
_DEVICE_OPT = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
_DATA_ROOT_OPT = typer.Option(None, "--data-root", metavar="DIR", help="Where dataset files live.")
_RUNS_DIR_OPT = typer.Option(
    None, "--runs-dir", metavar="DIR", help="Where checkpoints and evaluation state go (default: see README)."
)
_SET_OPT = typer.Option(
    [], "--set", "-s", metavar="KEY=VALUE", help="Override any config value, e.g. --set defense.steps=5."
)
_QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars.")
_ARCH_OPT = typer.Option(None, "--arch", metavar="NAME", help="Architecture plugin, e.g. smallcnn.")
_DATA_OPT = typer.Option(None, "--data", metavar="NAME", help="Dataset plugin, e.g. digits.")
_EPOCHS_OPT = typer.Option(None, "--epochs", metavar="N", help="Training epochs.")
#: environment variable with the command line of a process that ``--nproc`` starts
TORCHRUN_ARGV = "ROBENCH_TORCHRUN_ARGV"
_NPROC_OPT = typer.Option(
    None, "--nproc", metavar="N", min=1,
    help="Train on N processes (one per GPU; gloo on CPU) through torchrun; train.batch_size stays the global batch.",
)


def _other_rank() -> bool:
    """Whether this is a torchrun process other than rank 0."""
    return os.environ.get("RANK", "0") != "0"


def _wait_forwarding_sigterm(child: Any) -> int:
    """Wait for torchrun; a SIGTERM to this process (``kill``, a scheduler) goes on to it.

    torchrun passes it to every rank, which stop at the next agreed step with a
    mid-epoch ``last.pt``. SIGINT is not passed on: Ctrl-C reaches torchrun from the
    terminal already, and a second one would cut the ranks' checkpoint short."""
    import signal

    handlers = {signal.SIGTERM: lambda signum, frame: child.send_signal(signum),
                signal.SIGINT: lambda signum, frame: None}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        return int(child.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _launch_torchrun(nproc: Optional[int], device: str, batch_size: int) -> None:
    """Start this very command under torchrun with ``nproc`` processes, then exit with its code.

    Does nothing when ``nproc`` is 1 or unset, or inside torchrun already (where the
    number of processes must then agree).
    """
    import subprocess

    from robench.engine.distributed import world_from_env
    from robench.api.errors import UserError

    if "RANK" in os.environ:  # a torchrun process already
        world = world_from_env()
        if nproc is not None and nproc != world.size:
            raise UserError(f"--nproc {nproc} but torchrun started {world.size} process(es)")
        return
    if nproc is None or nproc == 1:
        return
    if batch_size < nproc:
        raise UserError(f"train.batch_size {batch_size} is the global batch; it must be at least --nproc {nproc}")
    if device.startswith("cuda"):
        import torch

        if nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) here")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # the arguments travel in the environment: torchrun's own parser would claim some (--nproc)
    env[TORCHRUN_ARGV] = json.dumps(sys.argv[1:])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "robench"]
    out.print(Text(f"torchrun: {nproc} processes"), soft_wrap=True)
    code = _wait_forwarding_sigterm(subprocess.Popen(cmd, env=env))
    if code != 0:
        err.print(Text(f"error: a torchrun process failed (exit code {code}); its message is above"), soft_wrap=True)
    raise typer.Exit(code if code in (0, 2) else 1)


def _eval_flags(
    attack: Optional[list[str]], eps: Optional[str], norm: Optional[str], n_eval: Optional[int],
    eps_sweep: bool, seed: Optional[int], device: Optional[str], data_root: Optional[Path],
    runs_dir: Optional[Path],
) -> dict[str, Any]:
    """The command-line layer shared by run and eval."""
    flags: dict[str, Any] = {}
    if attack:
        flags["attacks"] = list(attack)
    threat = {k: v for k, v in (("eps", eps), ("norm", norm)) if v is not None}
    if threat:
        flags["threat"] = threat
    evaluation: dict[str, Any] = {}
    if n_eval is not None:
        evaluation["n_eval"] = n_eval
    if eps_sweep:
        evaluation["eps_sweep"] = True
    if evaluation:
        flags["eval"] = evaluation
    for key, value in (("seed", seed), ("device", device), ("data_root", data_root), ("runs_dir", runs_dir)):
        if value is not None:
            flags[key] = str(value) if isinstance(value, Path) else value
    return flags


@contextlib.contextmanager
def _reporter(quiet: bool) -> Iterator[Any]:
    """Progress bars on stderr, or none with --quiet."""
    from robench.core.progress import NullReporter, RichReporter

    if quiet or _other_rank():
        yield NullReporter()
    else:
        with RichReporter(err) as reporter:
            yield reporter


def _plugin_flags(flags: dict[str, Any], epochs: Optional[int], **plugins: Optional[str]) -> dict[str, Any]:
    """Add --defense/--arch/--data (names) and --epochs to the command-line layer."""
    for section, value in plugins.items():
        if value is not None:
            flags[section] = {"name": value}
    if epochs is not None:
        flags["train"] = {"epochs": epochs}
    return flags


#: how the record's ``selected_by`` reads on the console
_SELECTED_BY = {"val_pgd": "validation PGD accuracy", "val_clean": "validation clean accuracy"}


def _print_other_checkpoint(rec: RunRecord) -> None:
    """One line on the checkpoint the record does not report, so that a reader of the
    table knows whether best and last differ and how the best was chosen."""
    other = "last" if rec.selected == "best" else "best"
    if "best" in rec.checkpoints:
        metric = _SELECTED_BY.get(rec.checkpoints["best"].get("selected_by", ""), "validation accuracy")
        out.print(f"best checkpoint chosen by {metric}")
    if other not in rec.checkpoints:
        which = f"last checkpoint (epoch {rec.history[-1]['epoch']})" if other == "last" else "best checkpoint"
        out.print(f"the {which} was not evaluated (--set eval.checkpoints=both evaluates it too)")
    elif rec.checkpoints[other]["epoch"] == rec.checkpoints[rec.selected]["epoch"]:
        out.print("the best checkpoint is also the last")
    else:
        acc = rec.checkpoints[other]["accuracy"]
        out.print(f"{other} checkpoint (epoch {rec.checkpoints[other]['epoch']}): "
                  f"clean {acc['clean']:.2f}, worst case {acc['worst case']:.2f}")


def _print_evaluation(title: str, accuracy: dict[str, float], section: dict[str, Any]) -> None:
    table = Table()
    table.add_column(title)
    table.add_column("accuracy (%)", justify="right")
    for key, value in accuracy.items():
        table.add_row(key, f"{value:.2f}", style="bold" if key == "worst case" else None)
    out.print(table)
    sweep = section.get("eps_sweep")
    if sweep:
        out.print(Text("eps sweep, " + sweep["attack"] + ": "
                       + ", ".join(f"{p['eps']}: {p['accuracy']:.2f}" for p in sweep["points"])), soft_wrap=True)
    failed = [c for c in section.get("checks", []) if not c["passed"]]
    if section.get("checks") and not failed:
        out.print(f"robench checks passed: {', '.join(c['name'] for c in section['checks'])}")
    if section.get("flags"):
        err.print(Text("POTENTIALLY UNRELIABLE: this evaluation raised flags:", style="bold red"))
        for flag in section["flags"]:
            err.print(Text(f"  - {flag}", style="red"), soft_wrap=True)


@app.command()
def run(
    config: Optional[Path] = _CONFIG_OPT,
    defense: Optional[str] = typer.Option(None, "--defense", metavar="NAME", help="Defense plugin, e.g. pgd-at."),
    arch: Optional[str] = _ARCH_OPT,
    data: Optional[str] = _DATA_OPT,
    attack: Optional[list[str]] = _ATTACK_OPT,
    eps: Optional[str] = _EPS_OPT,
    norm: Optional[str] = _NORM_OPT,
    epochs: Optional[int] = _EPOCHS_OPT,
    n_eval: Optional[int] = _N_EVAL_OPT,
    eps_sweep: bool = _SWEEP_OPT,
    seed: Optional[int] = _SEED_OPT,
    device: Optional[str] = _DEVICE_OPT,
    data_root: Optional[Path] = _DATA_ROOT_OPT,
    results_dir: Optional[Path] = typer.Option(
        None, "--results-dir", metavar="DIR", help="Where records and leaderboards go (default: see README)."
    ),
    runs_dir: Optional[Path] = _RUNS_DIR_OPT,
    overrides: list[str] = _SET_OPT,
    download: bool = typer.Option(False, "--download", help="Download the dataset if it is missing."),
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="RUN",
        help="Continue an interrupted run (its id, folder or last.pt) with its own config.",
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", metavar="P", help="fp32, bf16 or fp16 (with loss scaling) for training; evaluation stays fp32.",
    ),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last memory format (GPU tensor cores)."),
    compile_model: bool = typer.Option(
        False, "--compile", help="torch.compile the training forward passes (UAD-AT's double backward stays eager).",
    ),
    nproc: Optional[int] = _NPROC_OPT,
    quiet: bool = _QUIET_OPT,
) -> None:
    """Train a model with a defense, evaluate its best and last checkpoints, record the run
    and refresh the leaderboard.

    With no options: PGD-AT on the embedded digits dataset with a small CNN (CPU, under a minute).
    """
    from robench.core.config import resolve, validate
    from robench.workflows.run import RESUME_SETTINGS, execute, plan_resume, plan_run, resume_point

    flags = _plugin_flags(_eval_flags(attack, eps, norm, n_eval, eps_sweep, seed, device, data_root, runs_dir),
                          epochs, defense=defense, arch=arch, data=data)
    if download:
        flags["download"] = True
    if results_dir is not None:
        flags["results_dir"] = str(results_dir)
    if precision is not None:
        flags.setdefault("train", {})["precision"] = precision
    engine = {k: True for k, on in (("channels_last", channels_last), ("compile", compile_model)) if on}
    if engine:
        flags["engine"] = engine

    checkpoint = None
    if resume is not None:
        changed = sorted(k for k in flags if k not in RESUME_SETTINGS)
        if config is not None or overrides or changed:
            given = ["--config"] * (config is not None) + ["--set"] * bool(overrides) + changed
            raise typer.BadParameter(
                f"continues a run with its own config; it cannot change {', '.join(given)}", param_hint="--resume"
            )
        plan, checkpoint = plan_resume(resume, flags)
        trained_on = (checkpoint.train_state or {}).get("world_size")
        if trained_on is not None and trained_on != (nproc or plan.world.size):
            raise typer.BadParameter(f"this run trained on {trained_on} process(es); resume it with --nproc {trained_on}",
                                     param_hint="--resume")
        out.print(Text(f"robench run --resume: {plan.run_id}, continuing after {resume_point(checkpoint)} "
                       f"({plan.config.train.epochs} epochs in all)"), soft_wrap=True)
    else:
        plan = plan_run(validate(resolve(config, flags, overrides)))
    _launch_torchrun(nproc, str(plan.device), plan.config.train.batch_size)  # every input is checked before processes start
    if checkpoint is None:
        procs = f", {plan.world.size} processes" if plan.world.active else ""
        out.print(
            f"[bold]robench run[/]: {plan.names['defense']} on {plan.names['data']} with "
            f"{plan.names['arch']}, {plan.threat}, seed {plan.config.seed}, {plan.device}{procs}"
        )
    out.print(Text(f"run folder:  {plan.run_dir}"), soft_wrap=True)
    from robench.engine.train import TrainingStopped

    try:
        with _reporter(quiet) as reporter:
            outcome = execute(plan, reporter, resume=checkpoint)
    except TrainingStopped as stopped:
        if plan.world.is_main:
            err.print(Text(f"{stopped}; continue with: robench run --resume {plan.run_id}"), soft_wrap=True)
        raise typer.Exit(stopped.exit_code) from None
    except KeyboardInterrupt:
        if (plan.run_dir / "last.pt").is_file():
            err.print(Text(f"interrupted; continue with: robench run --resume {plan.run_id}"), soft_wrap=True)
        raise
    if outcome is None:  # a torchrun rank other than 0: rank 0 reports
        return

    rec = outcome.record
    _print_evaluation(f"{rec.dataset}, {plan.threat}, {rec.selected} checkpoint (epoch "
                      f"{rec.checkpoints[rec.selected]['epoch']})", rec.accuracy, rec.eval)
    _print_other_checkpoint(rec)
    out.print(f"test images: {rec.eval['n']}   wall time: {rec.wall_time_s:.1f} s")
    out.print(Text(f"record:      {outcome.record_path}"), soft_wrap=True)
    out.print(Text(f"checkpoints: {outcome.run_dir} (best.pt, last.pt, log.jsonl)"), soft_wrap=True)
    out.print(Text(f"leaderboard: {outcome.leaderboard_path}"), soft_wrap=True)
    for skipped in outcome.skipped:
        err.print(Text(f"warning: skipped invalid record {skipped.path}: {skipped.reason}"))


@app.command()
def ablate(
    defense: str = typer.Option(..., "--defense", metavar="NAME", help="Defense to ablate, e.g. uadat."),
    off: list[str] = typer.Option(
        ..., "--off", metavar="PARAM", help="A component switch (boolean hyperparameter) to turn off; repeat."
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", metavar="LIST", help="Comma-separated seeds."),
    config: Optional[Path] = _CONFIG_OPT,
    arch: Optional[str] = _ARCH_OPT,
    data: Optional[str] = _DATA_OPT,
    attack: Optional[list[str]] = _ATTACK_OPT,
    eps: Optional[str] = _EPS_OPT,
    norm: Optional[str] = _NORM_OPT,
    epochs: Optional[int] = _EPOCHS_OPT,
    n_eval: Optional[int] = _N_EVAL_OPT,
    device: Optional[str] = _DEVICE_OPT,
    data_root: Optional[Path] = _DATA_ROOT_OPT,
    results_dir: Optional[Path] = typer.Option(
        None, "--results-dir", metavar="DIR", help="Where the ablation's records go (default: <results>/ablations/<defense>)."
    ),
    runs_dir: Optional[Path] = _RUNS_DIR_OPT,
    overrides: list[str] = _SET_OPT,
    quiet: bool = _QUIET_OPT,
) -> None:
    """Ablate a defense: the full method, each named component off, and all off, over seeds.

    Every variant is an ordinary run; the results folder's leaderboard is the ablation
    table. Rerun the same command to finish an interrupted ablation.
    """
    from robench.workflows.ablate import plan_ablation
    from robench.api.errors import UserError
    from robench.workflows.run import execute

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers such as 0,1,2, got {seeds!r}") from None
    flags = _plugin_flags(_eval_flags(attack, eps, norm, n_eval, False, None, device, data_root, runs_dir),
                          epochs, arch=arch, data=data)
    plan = plan_ablation(defense, off, seed_list, config_file=config, flags=flags, overrides=overrides,
                         results_dir=str(results_dir) if results_dir else None)
    out.print(Text(f"robench ablate: {defense}, {len(plan.runs)} run(s) to do, {len(plan.done)} already "
                   f"recorded, into {plan.results}"), soft_wrap=True)
    board = None
    for i, (variant, seed, run_plan) in enumerate(plan.runs, 1):
        out.print(f"[{i}/{len(plan.runs)}] {variant.label}, seed {seed}")
        with _reporter(quiet) as reporter:
            outcome = execute(run_plan, reporter)
        if outcome is None:  # a torchrun rank other than 0
            continue
        acc = outcome.record.accuracy
        out.print(f"  clean {acc['clean']:.2f}, worst case {acc['worst case']:.2f}")
        board = outcome.leaderboard_path
    if board is not None:
        out.print(Text(f"ablation table: {board}"), soft_wrap=True)


@app.command("eval")
def eval_checkpoint(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", metavar="PATH", help="A best.pt or last.pt written by robench run.", show_default=False
    ),
    weights: Optional[Path] = typer.Option(
        None, "--weights", metavar="FILE", show_default=False,
        help="Instead: a plain state dict of the network (official checkpoints), with --arch and --data.",
    ),
    arch: Optional[str] = typer.Option(None, "--arch", metavar="NAME", help="With --weights: the architecture."),
    data: Optional[str] = typer.Option(None, "--data", metavar="NAME", help="With --weights: the dataset."),
    config: Optional[Path] = _CONFIG_OPT,
    attack: Optional[list[str]] = _ATTACK_OPT,
    eps: Optional[str] = _EPS_OPT,
    norm: Optional[str] = _NORM_OPT,
    n_eval: Optional[int] = _N_EVAL_OPT,
    eps_sweep: bool = _SWEEP_OPT,
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Attack seed; default: the run's."),
    device: Optional[str] = _DEVICE_OPT,
    data_root: Optional[Path] = _DATA_ROOT_OPT,
    runs_dir: Optional[Path] = _RUNS_DIR_OPT,
    results_dir: Optional[Path] = typer.Option(
        None, "--results-dir", metavar="DIR",
        help="Results folder whose records and boards the report joins (default: see README).",
    ),
    out_file: Optional[Path] = typer.Option(
        None, "--out", metavar="FILE", help="Report path instead (boards do not read it)."
    ),
    overrides: list[str] = _SET_OPT,
    quiet: bool = _QUIET_OPT,
) -> None:
    """Evaluate a saved model: clean, FGSM, PGD-20, CW-20, AutoAttack, plus robench's checks.

    A robench checkpoint brings its model, data and threat model; weights robench did not
    save (--weights, e.g. the official TRADES WRN-34-10) need --arch and --data, and
    --set data.normalize=false where they were trained on raw [0, 1] inputs. Rerun the
    same command after an interruption to resume (AutoAttack included).
    """
    from robench.workflows.evaluate import execute_eval, plan_eval

    flags = _eval_flags(attack, eps, norm, n_eval, eps_sweep, seed, device, data_root, runs_dir)
    if results_dir is not None:
        flags["results_dir"] = str(results_dir)
    source = _eval_source(checkpoint, weights, arch, data, flags)
    plan = plan_eval(source, config_file=config, flags=flags, overrides=overrides, out=out_file)
    run_plan = plan.run
    what = plan.source.run_id or f"weights {plan.source.path.name}"
    out.print(Text(
        f"robench eval: {what} ({run_plan.names['arch']} on {run_plan.names['data']}), "
        f"{run_plan.threat}, {len(run_plan.suite)} attack(s), {run_plan.device}"
    ), soft_wrap=True)
    with _reporter(quiet) as reporter:
        report, path, _, board = execute_eval(plan, reporter)
    _print_evaluation(f"{report.dataset}, {run_plan.threat}", report.accuracy, report.eval)
    out.print(f"test images: {report.eval['n']}   wall time: {report.wall_time_s:.1f} s")
    out.print(Text(f"report: {path}"), soft_wrap=True)
    if board is not None:
        out.print(Text(f"leaderboard: {board}"), soft_wrap=True)


def _eval_source(
    checkpoint: Optional[Path], weights: Optional[Path], arch: Optional[str], data: Optional[str],
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
    flags["arch"], flags["data"] = {"name": arch}, {"name": data}
    return EvalSource.weights(weights)


@app.command("list")
def list_plugins(
    kind: Optional[str] = typer.Argument(
        None, help="defense, architecture, dataset or attack (plurals work); default: all."
    ),
    name: Optional[str] = typer.Argument(None, help="A plugin of that kind: show its hyperparameters."),
    input_size: int = typer.Option(
        32, "--input-size", metavar="PIXELS", help="Image side for architectures' parameter and MAC counts."
    ),
    channels: int = typer.Option(3, "--channels", metavar="N", help="Input channels for those counts."),
    classes: int = typer.Option(10, "--classes", metavar="N", help="Classes for those counts."),
) -> None:
    """List installed plugins with their distribution; broken ones show their error.

    `robench list architecture` also shows each model's parameters and MACs per image;
    `robench list defense trades` shows one plugin's hyperparameters and their --set keys.
    """
    from robench.api.errors import UserError
    from robench.api.params import suggest
    from robench.core.registry import KINDS, get_registry

    if kind is None:
        kinds = list(KINDS)
    else:
        key = kind.strip().lower()
        if key not in KIND_ALIASES:
            raise UserError(f"unknown plugin kind {kind!r}{suggest(key, KIND_ALIASES)}; kinds: {', '.join(KINDS)}")
        kinds = [KIND_ALIASES[key]]
    if name is not None:
        if kind is None:
            raise UserError("robench list KIND NAME: give the kind too, e.g. robench list defense trades")
        _show_params(kinds[0], name)
        return
    if min(input_size, channels, classes) < 1:
        raise UserError("--input-size, --channels and --classes must be >= 1")
    sizes = kinds == ["architecture"]
    table = Table(title="robench plugins" + (f" ({channels}x{input_size}x{input_size}, {classes} classes)" if sizes else ""))
    columns = ["kind", "name", "distribution", "object", "status"]
    if sizes:
        columns[4:4] = ["params", "MACs"]
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in ("params", "MACs") else "left")
    broken: list[str] = []
    for k in kinds:
        for status in get_registry(k).check():
            entry = status.entry
            if status.error:
                broken.append(status.error)
                state = Text("broken", style="red")
            elif status.shadowed_by is not None:
                state = Text(f"shadowed by {status.shadowed_by.distribution}", style="yellow")
            else:
                state = Text("ok", style="green")
            row = [k, entry.name, entry.distribution, entry.target]
            if sizes:
                row += _arch_size(status.plugin, entry.name, (channels, input_size, input_size), classes)
            table.add_row(*row, state)
    out.print(table)
    for error in broken:  # full errors below the table: one line each, greppable
        out.print(Text(f"broken: {error}", style="red"), soft_wrap=True)
    if broken:
        err.print(Text(f"{len(broken)} broken plugin(s); the others are usable."))


def _show_params(kind: str, name: str) -> None:
    """One plugin's hyperparameters: key, type and bounds, default, help."""
    from robench.core.config import PLUGIN_SECTIONS
    from robench.api.params import describe_params
    from robench.core.registry import get_registry

    registry = get_registry(kind)
    cls = registry.load(name)
    entry = registry.entry(name)
    section = {k: s for s, k in PLUGIN_SECTIONS.items()}.get(kind)
    how = f"--set {section}.KEY=VALUE" if section else f"attacks: [{{name: {entry.name}, KEY: VALUE}}] in a config"
    table = Table(title=f"{kind} {entry.name} ({entry.distribution}): {how}")
    for column in ("key", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for row in describe_params(cls.Params):
        table.add_row(*row)
    out.print(table)
    for attr, spelling in (("count_param", f"{entry.name}-N sets {{}}"), ("variant_param", f"{entry.name}/X sets {{}}")):
        if getattr(cls, attr, None):
            out.print(Text(spelling.format(getattr(cls, attr))), soft_wrap=True)


def _arch_size(plugin: Any, name: str, shape: tuple[int, int, int], classes: int) -> list[str]:
    """Parameter and MAC counts of an architecture plugin with default params, or why not."""
    from robench.core.flops import count_macs, human
    from robench.api.model import count_parameters

    if plugin is None:
        return ["", ""]
    if plugin.variant_param:
        return ["", f"use {name}/<{plugin.variant_param}>"]
    try:
        net = plugin().build(classes, shape)
        return [human(count_parameters(net)), human(count_macs(net, shape))]
    except Exception as exc:  # one bad architecture must not break the listing
        return ["", f"cannot build: {type(exc).__name__}"]


app.command("leaderboard")(leaderboard)
app.command("bench")(bench)
app.command("new")(new)
app.command("sweep")(sweep)
app.add_typer(plot_app, name="plot")

data_app = typer.Typer(help="Dataset files: where they live and how to get them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset plugin, e.g. cifar10."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", metavar="DIR", help="Where to put it."),
) -> None:
    """Download a dataset (the only command, with `run --download`, that downloads)."""
    from robench.core.paths import data_root as resolve_root
    from robench.core.registry import get_registry
    from robench.workflows.run import fetch_data, load_data

    registry = get_registry("dataset")
    dataset = registry.create(name, where="data")
    canonical = registry.canonical_name(name)
    root = resolve_root(data_root)
    out.print(Text(f"fetching {canonical} into {root}"), soft_wrap=True)
    fetch_data(dataset, canonical, root)
    splits, used = load_data(dataset, canonical, root)
    sizes = ", ".join(f"{k} {len(getattr(splits, k))}" for k in ("train", "val", "test") if getattr(splits, k) is not None)
    where = f" in {used}" if used is not None else " (embedded)"
    out.print(Text(f"{canonical} ready{where}: {sizes} images"), soft_wrap=True)


@data_app.command("where")
def data_where(
    name: Optional[str] = typer.Argument(None, help="Dataset plugin: say which folder a run would read it from."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", metavar="DIR", help="Override, as for run."),
) -> None:
    """The folders robench looks in for datasets, in order; with NAME, the one a run uses.

    A run reads a dataset from the first folder of the order that holds its files
    (its record keeps that folder as data_dir). Downloads go to the first folder.
    """
    from robench.core.paths import data_places
    from robench.core.registry import get_registry
    from robench.workflows.run import find_data

    if name is None:
        for i, place in enumerate(data_places(data_root), 1):
            out.print(Text(f"{i}. {place}"), soft_wrap=True)
        out.print(Text("(a dataset may add system folders after these: robench data where NAME)"), soft_wrap=True)
        return
    registry = get_registry("dataset")
    dataset = registry.create(name, where="data")
    canonical = registry.canonical_name(name)
    if not getattr(dataset, "needs_files", True):
        out.print(Text(f"{canonical} is embedded: it needs no files"), soft_wrap=True)
        return
    found, places = find_data(dataset, canonical, data_root)
    for i, place in enumerate(places, 1):
        mark = "  <- used" if place == found else ""
        out.print(Text(f"{i}. {place}{mark}"), soft_wrap=True)
    if found is None:
        from robench.workflows.run import load_data

        load_data(dataset, canonical, data_root)  # raises the one-line "not found" message


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    err.print(Text(f"warning: {message}", style="yellow"))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    if argv is None and TORCHRUN_ARGV in os.environ:  # a process that --nproc started
        argv = json.loads(os.environ.pop(TORCHRUN_ARGV))
    command = typer.main.get_command(app)
    debug = bool(os.environ.get("ROBENCH_DEBUG"))
    warnings.showwarning = _show_warning
    try:
        rv = command.main(args=argv, prog_name="robench", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except _EXIT as exc:
        return int(getattr(exc, "exit_code", 0))
    except _ABORT:
        err.print("aborted")
        return 130
    except _click_exc.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        err.print(Text(f"error: {one_line(exc.format_message())}{hint}"))
        return 2
    except _click_exc.ClickException as exc:
        err.print(Text(f"error: {one_line(exc.format_message())}"))
        return exc.exit_code
    except RobenchError as exc:
        if debug:
            raise
        err.print(Text(f"error: {one_line(str(exc))}"))
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `robench list | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # an internal failure: one line unless debugging
        if debug:
            raise
        err.print(Text(f"internal error: {type(exc).__name__}: {one_line(str(exc))} (ROBENCH_DEBUG=1 shows the traceback)"))
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
