"""``robench new KIND NAME``: scaffold an installable plugin package.

Registered on the main app by :mod:`robench.cli.main`, which owns exit codes and error lines.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

out = Console(highlight=False)


def new(
    kind: str = typer.Argument(..., metavar="KIND", help="defense, attack, architecture, dataset or logger."),
    name: str = typer.Argument(..., metavar="NAME", help="Plugin name: lowercase letters, digits and '-', e.g. my-at."),
    directory: Path | None = typer.Option(
        None, "--dir", metavar="DIR", help="Where to write the package (default: ./robench-NAME); must be new or empty.",
    ),
) -> None:
    """Write a new plugin package with a working template, its tests and a README: install it with
    `pip install -e DIR` and it runs under robench at once."""
    from robench.workflows.scaffold import KINDS, default_directory, package_name, scaffold

    kind = kind.strip().lower()
    target = directory if directory is not None else default_directory(name)
    files = scaffold(kind, name, target)
    flag = KINDS[kind][2]
    out.print(Text(f"robench new: {kind} plugin {name!r} in {target}"), soft_wrap=True)
    for path in files:
        out.print(Text(f"  {path}"), soft_wrap=True)
    module = f"{package_name(name)}/{KINDS[kind][1]}.py"
    out.print(Text(f"next: edit {module}, then"), soft_wrap=True)
    for command in (f"pip install -e {target}", f"robench list {kind}",
                    f"robench run {flag} {name} --epochs 1 --attack fgsm", f"pytest {target}"):
        out.print(Text(f"  {command}"), soft_wrap=True)
