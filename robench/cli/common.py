"""What the commands share: the consoles, the common options, the flags they build and
the evaluation table they print."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from robench.results.records import RunRecord


out = Console(highlight=False)


# soft_wrap: an error stays one line however narrow the terminal
err = Console(stderr=True, highlight=False, soft_wrap=True)


# The options several commands declare alike, declared once here so that each means the
# same (name, metavar, help) wherever it appears; flag_layer() says what each one sets.

# what to run
CONFIG_OPT = typer.Option(
    None, "--config", "-c", metavar="FILE", help="YAML config; flags and --set override it.", show_default=False
)
SET_OPT = typer.Option(
    [], "--set", "-s", metavar="KEY=VALUE", help="Override any config value, e.g. --set defense.steps=5."
)
ARCH_OPT = typer.Option(None, "--arch", metavar="NAME", help="Architecture plugin, e.g. smallcnn.")
DATA_OPT = typer.Option(None, "--data", metavar="NAME", help="Dataset plugin, e.g. digits.")
EPOCHS_OPT = typer.Option(None, "--epochs", metavar="N", help="Training epochs.")

# how it is evaluated
ATTACK_OPT = typer.Option(
    None, "--attack", metavar="NAME",
    help="Evaluation attack, e.g. pgd-50; repeat for a suite (replaces the configured one).",
)
EPS_OPT = typer.Option(None, "--eps", metavar="EPS", help='Exact budget, e.g. "8/255"; default: the dataset\'s.')
NORM_OPT = typer.Option(None, "--norm", metavar="NORM", help="Linf or L2; default: the dataset's.")
N_EVAL_OPT = typer.Option(None, "--n-eval", metavar="N", help="Evaluate on a fixed-seed subset of N test images.")
EPS_SWEEP_OPT = typer.Option(False, "--eps-sweep", help="Also record PGD-20 accuracy at 0 to 2x eps (for plots).")

# where and how it runs
SEED_OPT = typer.Option(None, "--seed", metavar="N", help="Seed for everything random.")
DEVICE_OPT = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
DATA_ROOT_OPT = typer.Option(None, "--data-root", metavar="DIR", help="Where dataset files live.")
RUNS_DIR_OPT = typer.Option(
    None, "--runs-dir", metavar="DIR", help="Where checkpoints and evaluation state go (default: see README)."
)
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def other_rank() -> bool:
    """Whether this is a torchrun process other than rank 0."""
    return os.environ.get("RANK", "0") != "0"


def flag_layer(
    *, attack: list[str] | None = None, eps: str | None = None, norm: str | None = None, n_eval: int | None = None,
    eps_sweep: bool = False, seed: int | None = None, device: str | None = None, data_root: Path | None = None,
    runs_dir: Path | None = None, defense: str | None = None, arch: str | None = None, data: str | None = None,
    epochs: int | None = None, download: bool = False, results_dir: Path | None = None, precision: str | None = None,
    channels_last: bool = False, compile_model: bool = False,
) -> dict[str, Any]:
    """The command-line layer of the config from the options run, ablate and eval share,
    so that one option means the same config key in every command. An option not given
    (None, or a switch left off) sets nothing: the config file and the defaults decide."""
    given: dict[str, Any] = {
        "attacks": list(attack) if attack else None, "threat.eps": eps, "threat.norm": norm,
        "eval.n_eval": n_eval, "eval.eps_sweep": eps_sweep or None, "seed": seed, "device": device,
        "data_root": data_root, "runs_dir": runs_dir, "defense.name": defense, "arch.name": arch, "data.name": data,
        "train.epochs": epochs, "download": download or None, "results_dir": results_dir,
        "train.precision": precision, "engine.channels_last": channels_last or None,
        "engine.compile": compile_model or None,
    }
    flags: dict[str, Any] = {}
    for key, value in given.items():
        if value is not None:
            *sections, name = key.split(".")
            node = flags
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = str(value) if isinstance(value, Path) else value
    return flags


@contextlib.contextmanager
def progress(quiet: bool) -> Iterator[Any]:
    """Progress bars on stderr, or none with --quiet."""
    from robench.core.progress import NullReporter, RichReporter

    if quiet or other_rank():
        yield NullReporter()
    else:
        with RichReporter(err) as reporter:
            yield reporter


#: how the record's ``selected_by`` reads on the console
_SELECTED_BY = {"val_pgd": "validation PGD accuracy", "val_clean": "validation clean accuracy"}


def print_other_checkpoint(rec: RunRecord) -> None:
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


def print_evaluation(title: str, accuracy: dict[str, float], section: dict[str, Any]) -> None:
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
