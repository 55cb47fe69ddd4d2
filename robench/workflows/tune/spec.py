"""Tuning files: which defenses to tune, over what, with how many trials and seeds.

A tuning file::

    name: digits                        # optional; default: the file's stem
    config: ../digits/default.yaml      # optional base run config, relative to this file
    trials: 4                           # settings tried per candidate: the same for all
    tuning_seeds: [100, 101]            # every trial is trained with each of these
    final_seeds: [0, 1, 2, 3, 4]        # the chosen settings, trained afresh: the board
    score: val_pgd                      # validation accuracy the choice maximises
    search_seed: 0                      # draws the trials of a space with more points
    set: {train.epochs: 20}             # every run, tuning and final
    final_set: {attacks: [fgsm, pgd-20, autoattack]}   # the final runs only
    candidates:
      - defense: trades
        space: {defense.beta: [1, 3, 6, 9]}
      - defense: pgd-at
        set: {defense.steps: 16}        # a candidate's own fixed settings
        space: {defense.step_size: ["1/32", "3/64", "1/16", "3/32"]}
      - defense: standard               # no space: not tuned, final runs only

Every candidate with a space gets exactly ``trials`` settings: all points of its grid
when it has that many, a seeded random draw of them when it has more. A space with
fewer points is an error, since the candidates would not get the same budget.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.api.errors import ConfigError
from robench.api.params import shown
from robench.core.config import load_yaml
from robench.workflows.plans import SELECTION_METRICS
from robench.workflows.sweep.grid import Axis, SweepSpec, base_config, check_keys, layer_items, parse_grid

TUNING_KEYS = ("name", "config", "trials", "tuning_seeds", "final_seeds", "score", "search_seed", "set",
               "final_set", "candidates")
CANDIDATE_KEYS = ("defense", "label", "set", "space")
#: tuning runs train and validate; the test set stays unseen until the final runs
TUNING_ITEMS = ("eval.checkpoints=none",)

Setting = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Candidate:
    """One row of the board to be: a defense with its own fixed settings and its trials."""

    label: str
    defense: str
    #: the candidate's fixed settings (``defense.steps: 16``), as (key, value) pairs
    fixed: Setting
    #: the settings tried, each as (key, value) pairs; empty: not tuned
    trials: tuple[Setting, ...]


@dataclass(frozen=True)
class TuneSpec:
    name: str
    config: Path | None
    trials: int
    tuning_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    score: str
    #: ``--set`` items of every run, and of the final runs only
    fixed: tuple[str, ...]
    final_fixed: tuple[str, ...]
    candidates: tuple[Candidate, ...]


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        raise ConfigError(f"{where}: expected a non-empty list of non-negative integer seeds, got {shown(value)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: a seed is listed twice: {shown(value)}")
    return tuple(value)


def _pairs(mapping: Any, where: str) -> Setting:
    """A mapping of fixed settings as (key, value) pairs, keys checked as ``--set`` keys."""
    layer_items(mapping, where)  # checks the keys
    return tuple((str(k).strip(), v) for k, v in mapping.items())


def draw_trials(space: Sequence[Axis], trials: int, search_seed: int, where: str) -> tuple[Setting, ...]:
    """``trials`` points of the grid ``space``: all of them, or a seeded draw in grid order."""
    points = [tuple(zip((k for k, _ in space), values)) for values in itertools.product(*(v for _, v in space))]
    if len(points) < trials:
        raise ConfigError(f"{where}: {len(points)} setting(s) for {trials} trials; every tuned candidate "
                          f"needs at least {trials}, so that all get the same budget")
    if len(points) > trials:
        chosen = sorted(random.Random(search_seed).sample(range(len(points)), trials))
        points = [points[i] for i in chosen]
    return tuple(points)


def _candidate(entry: Any, where: str, spec_trials: int, search_seed: int, base: Path) -> Candidate:
    if not isinstance(entry, Mapping) or "defense" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a defense, got {shown(entry)}")
    check_keys(entry, CANDIDATE_KEYS, where, "a candidate")
    defense = entry["defense"]
    if not isinstance(defense, str) or not defense.strip():
        raise ConfigError(f"{where}.defense: expected a defense name, got {shown(defense)}")
    fixed = _pairs(entry.get("set") or {}, f"{where}.set")
    space = entry.get("space") or {}
    trials: tuple[Setting, ...] = ()
    if space:
        (axes,) = parse_grid(space, f"{where}.space", base)
        trials = draw_trials(axes, spec_trials, search_seed, f"{where}.space")
    label = entry.get("label") or defense + (f" ({', '.join(f'{k}={v}' for k, v in fixed)})" if fixed else "")
    return Candidate(str(label), defense.strip(), fixed, trials)


def load_tuning(path: str | Path) -> TuneSpec:
    """Read and check a tuning file; ``config`` is taken relative to it."""
    path = Path(path).expanduser()
    data = load_yaml(path)
    where = str(path)
    check_keys(data, TUNING_KEYS, where, "a tuning file")
    for key in ("trials", "tuning_seeds", "final_seeds", "candidates"):
        if key not in data:
            raise ConfigError(f"{where}: {key} is missing")
    trials, search_seed = data["trials"], data.get("search_seed", 0)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"{where}: trials must be a positive integer, got {shown(trials)}")
    if not isinstance(search_seed, int) or isinstance(search_seed, bool):
        raise ConfigError(f"{where}: search_seed must be an integer, got {shown(search_seed)}")
    tuning, final = _seeds(data["tuning_seeds"], f"{where}: tuning_seeds"), _seeds(data["final_seeds"], f"{where}: final_seeds")
    if set(tuning) & set(final):
        raise ConfigError(f"{where}: final_seeds must be fresh; {sorted(set(tuning) & set(final))} also tune")
    score = data.get("score", "val_pgd")
    if score not in SELECTION_METRICS:
        raise ConfigError(f"{where}: score must be one of {', '.join(SELECTION_METRICS)}, got {shown(score)}")
    base = base_config(data, path)
    entries = data["candidates"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: candidates must be a non-empty list of defenses to tune")
    candidates = tuple(_candidate(e, f"{where}: candidates[{i}]", trials, search_seed, path.parent)
                       for i, e in enumerate(entries))
    labels = [c.label for c in candidates]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: two candidates are both {shown(next(x for x in labels if labels.count(x) > 1))}; "
                          "give one a label or its own set")
    return TuneSpec(
        name=str(data.get("name") or path.stem), config=base, trials=trials, tuning_seeds=tuning, final_seeds=final,
        score=score, fixed=tuple(layer_items(data.get("set") or {}, f"{where}: set")),
        final_fixed=tuple(layer_items(data.get("final_set") or {}, f"{where}: final_set")), candidates=candidates,
    )


def _product(candidate: Candidate, setting: Setting, seeds: Sequence[int]) -> tuple[Axis, ...]:
    values = {"defense": candidate.defense, **dict(candidate.fixed), **dict(setting)}
    return (*((k, (v,)) for k, v in values.items()), ("seed", tuple(seeds)))


def trial_sweep(spec: TuneSpec, candidate: Candidate, setting: Setting) -> SweepSpec:
    """One trial as a sweep: the candidate with ``setting``, once per tuning seed, validated only."""
    return SweepSpec(f"{spec.name}-tuning", spec.config, (_product(candidate, setting, spec.tuning_seeds),),
                     (*spec.fixed, *TUNING_ITEMS))


def final_sweep(spec: TuneSpec, chosen: Mapping[str, Setting]) -> SweepSpec:
    """The board's runs: every candidate with its chosen setting (``chosen`` by label), fresh seeds."""
    grids = tuple(_product(c, chosen.get(c.label, ()), spec.final_seeds) for c in spec.candidates)
    return SweepSpec(spec.name, spec.config, grids, (*spec.fixed, *spec.final_fixed))
