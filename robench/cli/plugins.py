"""``robench list``: installed plugins, their status, sizes and hyperparameters."""
from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from robench.cli.common import err, out

KIND_ALIASES = {
    "defense": "defense", "defenses": "defense", "defence": "defense", "defences": "defense",
    "architecture": "architecture", "architectures": "architecture", "arch": "architecture",
    "archs": "architecture", "dataset": "dataset", "datasets": "dataset", "data": "dataset",
    "attack": "attack", "attacks": "attack", "logger": "logger", "loggers": "logger",
}


def list_plugins(
    kind: str | None = typer.Argument(
        None, help="defense, architecture, dataset, attack or logger (plurals work); default: all."
    ),
    name: str | None = typer.Argument(None, help="A plugin of that kind: show its hyperparameters."),
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
    from robench.core.registry import get_registry

    kinds = _kinds(kind)
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


def _kinds(kind: str | None) -> list[str]:
    """The plugin kinds to list: all, or the one named (plurals and aliases work)."""
    from robench.api.errors import UserError
    from robench.api.params import suggest
    from robench.core.registry import KINDS

    if kind is None:
        return list(KINDS)
    key = kind.strip().lower()
    if key not in KIND_ALIASES:
        raise UserError(f"unknown plugin kind {kind!r}{suggest(key, KIND_ALIASES)}; kinds: {', '.join(KINDS)}")
    return [KIND_ALIASES[key]]


def _show_params(kind: str, name: str) -> None:
    """One plugin's hyperparameters: key, type and bounds, default, help."""
    from robench.api.params import describe_params
    from robench.core.config import PLUGIN_SECTIONS
    from robench.core.registry import get_registry

    registry = get_registry(kind)
    cls = registry.load(name)
    entry = registry.entry(name)
    section = {k: s for s, k in PLUGIN_SECTIONS.items()}.get(kind)
    listed = "loggers" if kind == "logger" else "attacks"
    how = f"--set {section}.KEY=VALUE" if section else f"{listed}: [{{name: {entry.name}, KEY: VALUE}}] in a config"
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
    from robench.api.model import count_parameters
    from robench.core.flops import count_macs, human

    if plugin is None:
        return ["", ""]
    if plugin.variant_param:
        return ["", f"use {name}/<{plugin.variant_param}>"]
    try:
        net = plugin().build(classes, shape)
        return [human(count_parameters(net)), human(count_macs(net, shape))]
    except Exception as exc:  # one bad architecture must not break the listing
        return ["", f"cannot build: {type(exc).__name__}"]
