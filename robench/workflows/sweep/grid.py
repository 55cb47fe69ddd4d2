"""Sweep files: a grid of run settings, written as the ``--set`` items of ordinary runs.

A grid point is nothing but a list of ``KEY=VALUE`` strings that ``robench run --set``
understands. Writing the point this way, rather than as a merged config, means the
sweep plans a run through the very parsing a ``robench run`` process does, so both
agree on the run's config hash (how a finished run is recognised later).

A sweep file::

    name: digits                       # optional; default: the file's stem
    config: ../digits/default.yaml     # optional base run config, relative to this file
    grid:                              # every combination is a run; a list of such
      defense: [pgd-at, trades]        # mappings is the union of their products
      seed: [0, 1, 2]
      defense.steps: [5, 10]           # any config key, with a list of values
      config: [a.yaml, b.yaml]         # or whole run configs (relative to this file)
    set:                               # the same for every run
      attacks: [fgsm, pgd-20]
      eval.eps_sweep: true
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from robench.api.errors import ConfigError
from robench.api.params import shown, suggest
from robench.core.config import PLUGIN_SECTIONS, TOP_LEVEL_KEYS, VALUE_SECTIONS, load_yaml

SWEEP_KEYS = ("name", "config", "grid", "set")
#: the grid key whose values are run config files rather than config values
CONFIG_AXIS = "config"
#: config sections whose keys a sweep may name as ``section.key``
_SECTIONS = (*PLUGIN_SECTIONS, *VALUE_SECTIONS)

Axis = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class SweepSpec:
    name: str
    #: the base run config of the points without a ``config`` axis (``robench run --config``)
    config: Path | None
    #: the union of these products; each is (key, values) in the order written; the
    #: values of a ``config`` axis are absolute paths
    grids: tuple[tuple[Axis, ...], ...]
    #: ``KEY=VALUE`` items applied to every point before its grid values
    fixed: tuple[str, ...] = ()


def set_item(key: str, value: Any) -> str:
    """``key=value`` that ``--set`` parses back to exactly ``value``.

    Plain words stay as typed (``defense=trades``); everything else is written as JSON,
    which YAML reads as the same value (``eps="8/255"``, ``attacks=["fgsm","pgd-20"]``).
    """
    if isinstance(value, str) and value.strip() == value and value:
        try:
            if yaml.safe_load(value) == value:
                return f"{key}={value}"
        except yaml.YAMLError:
            pass
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"{where}: keys must be config keys such as defense or train.epochs, got {shown(key)}")
    key = key.strip()
    top, _, sub = key.partition(".")
    if top not in TOP_LEVEL_KEYS:
        raise ConfigError(f"{where}: unknown key {shown(key)}{suggest(top, TOP_LEVEL_KEYS)}; known: {', '.join(TOP_LEVEL_KEYS)}")
    if sub and (top not in _SECTIONS or "." in sub or not sub):
        raise ConfigError(f"{where}: {shown(key)} must be 'key' or 'section.key' with a section among {', '.join(_SECTIONS)}")
    return key


def layer_items(layer: Any, where: str) -> list[str]:
    """A mapping of fixed settings (dotted keys or nested sections) as ``--set`` items."""
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {shown(layer)}")
    items = []
    for key, value in layer.items():
        key = _check_key(key, where)
        if "." not in key and key in _SECTIONS and isinstance(value, Mapping):
            items += [set_item(_check_key(f"{key}.{k}", where), v) for k, v in value.items()]
        else:
            items.append(set_item(key, value))
    return items


def config_files(values: Any, base: Path, where: str) -> tuple[Path, ...]:
    """A ``config`` axis: run config files, relative to ``base``, that exist."""
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, (str, Path)) for v in values):
        raise ConfigError(f"{where}.config: expected a non-empty list of run config files, got {shown(values)}")
    paths = tuple((base / Path(v).expanduser()).resolve() for v in values)
    for given, path in zip(values, paths):
        if not path.is_file():
            raise ConfigError(f"{where}.config: {str(given)!r} not found (looked for {path})")
    return paths


def parse_grid(grid: Any, where: str, base: Path) -> tuple[tuple[Axis, ...], ...]:
    """A grid mapping (or a list of them) as axes with their values; config files are
    taken relative to ``base``."""
    products = grid if isinstance(grid, list) else [grid]
    if not products:
        raise ConfigError(f"{where}: the grid is an empty list")
    out = []
    for i, product in enumerate(products):
        at = f"{where}[{i}]" if isinstance(grid, list) else where
        if not isinstance(product, Mapping) or not product:
            raise ConfigError(f"{at}: expected a mapping of config keys to lists of values, got {shown(product)}")
        axes = []
        for key, values in product.items():
            if key == CONFIG_AXIS:
                axes.append((key, config_files(values, base, at)))
                continue
            key = _check_key(key, at)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{at}.{key}: expected a non-empty list of values, got {shown(values)}")
            axes.append((key, tuple(values)))
        out.append(tuple(axes))
    return tuple(out)


def check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str, what: str) -> None:
    """Every key of a file's top level is one ``what`` may have."""
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key {shown(unknown[0])}{suggest(str(unknown[0]), allowed)}; "
                          f"{what} has {', '.join(allowed)}")


def base_config(data: Mapping[str, Any], path: Path) -> Path | None:
    """The file's ``config``, a run config relative to the file, checked to exist."""
    config = data.get("config")
    if config is not None and not isinstance(config, str):
        raise ConfigError(f"{path}: config must be the path of a run config, got {shown(config)}")
    base = (path.parent / config).resolve() if config else None
    if base is not None and not base.is_file():
        raise ConfigError(f"{path}: config {config!r} not found (looked for {base})")
    return base


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; ``config`` is taken relative to the file."""
    path = Path(path).expanduser()
    data = load_yaml(path)
    where = str(path)
    check_keys(data, SWEEP_KEYS, where, "a sweep file")
    if "grid" not in data:
        raise ConfigError(f"{where}: no grid (a mapping of config keys to lists of values)")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name must be a non-empty string, got {shown(name)}")
    base = base_config(data, path)
    fixed = layer_items(data.get("set") or {}, f"{where}: set")
    grids = parse_grid(data["grid"], f"{where}: grid", path.parent)
    return SweepSpec(name.strip(), base, grids, tuple(fixed))


def override(spec: SweepSpec, axes: Sequence[Axis], fixed: Sequence[str] = ()) -> SweepSpec:
    """Command-line axes replace (or add) the same key in every product; ``fixed`` items follow the file's."""
    axes = [(k if k == CONFIG_AXIS else _check_key(k, "command line"), v) for k, v in axes]
    grids = []
    for product in spec.grids or ((),):
        given = dict(product)
        given.update(dict(axes))
        grids.append(tuple(given.items()))
    if not any(grids):
        raise ConfigError("sweep: no grid; give a sweep file or at least one of --defense, --arch, --data, --seeds, --grid")
    return replace(spec, grids=tuple(grids), fixed=(*spec.fixed, *fixed))


def expand(spec: SweepSpec) -> list[tuple[Path | None, tuple[str, ...]]]:
    """Every point as (its run config, its ``--set`` items: fixed first, then its grid
    values), without repeats."""
    points: dict[tuple[Path | None, tuple[str, ...]], None] = {}
    for product in spec.grids:
        keys = [key for key, _ in product]
        for values in itertools.product(*(values for _, values in product)):
            chosen = dict(zip(keys, values))
            config = chosen.pop(CONFIG_AXIS, spec.config)
            points.setdefault((config, (*spec.fixed, *(set_item(k, v) for k, v in chosen.items()))), None)
    return list(points)
