"""``robench data``: where dataset files live and how to get them."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from robench.cli.common import out

data_app = typer.Typer(help="Dataset files: where they live and how to get them.", no_args_is_help=True)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset plugin, e.g. cifar10."),
    data_root: Path | None = typer.Option(None, "--data-root", metavar="DIR", help="Where to put it."),
) -> None:
    """Download a dataset (the only command, with `run --download`, that downloads)."""
    from robench.core.datasets import fetch_data, load_data
    from robench.core.paths import data_root as resolve_root
    from robench.core.registry import get_registry

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
    name: str | None = typer.Argument(None, help="Dataset plugin: say which folder a run would read it from."),
    data_root: Path | None = typer.Option(None, "--data-root", metavar="DIR", help="Override, as for run."),
) -> None:
    """The folders robench looks in for datasets, in order; with NAME, the one a run uses.

    A run reads a dataset from the first folder of the order that holds its files
    (its record keeps that folder as data_dir). Downloads go to the first folder.
    """
    from robench.core.datasets import find_data
    from robench.core.paths import data_places
    from robench.core.registry import get_registry

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
        from robench.core.datasets import load_data

        load_data(dataset, canonical, data_root)  # raises the one-line "not found" message
