"""The ``robench`` command line (Typer, rich output): the app, its commands and the exit codes.

Each command lives in its own module (``run``, ``ablate``, ``evaluate``, ``plugins``,
``data``, ``boards``, ``bench``, ``new``, ``sweep``, ``tune``, ``compare``) and only parses
and prints; the work is done by :mod:`robench.workflows`. Exit codes: 0 ok, 2 bad input
(one line on stderr, no traceback), 3 a training run diverged (its loss became NaN or
inf), 1 internal failure. Set ``ROBENCH_DEBUG=1`` to see the traceback of an
internal failure.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from typing import Any

import typer
from rich.text import Text

import robench
from robench.api.errors import RobenchError, one_line
from robench.cli.ablate import ablate
from robench.cli.bench import bench
from robench.cli.boards import leaderboard, plot_app
from robench.cli.common import err, other_rank, out
from robench.cli.compare import compare
from robench.cli.data import data_app
from robench.cli.evaluate import eval_checkpoint
from robench.cli.new import new
from robench.cli.plugins import list_plugins
from robench.cli.run import run
from robench.cli.sweep import sweep
from robench.cli.torchrun import TORCHRUN_ARGV
from robench.cli.tune import tune

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
    if other_rank():  # under torchrun, rank 0 alone talks
        out.quiet = True


app.command()(run)
app.command()(ablate)
app.command("eval")(eval_checkpoint)
app.command("list")(list_plugins)
app.command("leaderboard")(leaderboard)
app.command("bench")(bench)
app.command("new")(new)
app.command("sweep")(sweep)
app.command("tune")(tune)
app.command("compare")(compare)
app.add_typer(plot_app, name="plot")
app.add_typer(data_app, name="data")


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
