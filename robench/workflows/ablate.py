"""``robench ablate``: a defense with its components switched off, one at a time and all
together, and with alternative settings of single parameters (``--vary``), over several
seeds; every variant is an ordinary run with an ordinary record.

The records go to their own results folder (``<results>/ablations/<defense>``), whose
leaderboard is the ablation table: rows differ by the switched-off parameters, which
the leaderboard prints next to the defense's name. Rerunning the same command skips
the (variant, seed) pairs already recorded there, so an interrupted ablation resumes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.api.errors import ConfigError
from robench.core.config import config_hash, resolve, validate
from robench.core.paths import results_root
from robench.core.registry import get_registry
from robench.results.records import record_dir, recorded_runs
from robench.workflows.plans import RunPlan, plan_run


@dataclass(frozen=True)
class Variant:
    label: str
    off: tuple[str, ...]
    #: ``param=value`` settings of the defense that replace its defaults (``--vary``)
    changes: tuple[str, ...] = ()


def variants(switches: Sequence[str], varied: Sequence[str] = ()) -> list[Variant]:
    """The full method, each switch off alone, (for two or more) all off, then each
    varied setting alone."""
    out = [Variant("full", ())] + [Variant(f"without {s}", (s,)) for s in switches]
    if len(switches) > 1:
        out.append(Variant("all off", tuple(switches)))
    return out + [Variant(v, (), (v,)) for v in varied]


def check_varied(varied: Sequence[str]) -> None:
    """Each ``--vary`` is ``param=value``, named once."""
    for item in varied:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip() or "." in name:
            raise ConfigError(f"ablate: --vary expects PARAM=VALUE of the defense, e.g. uncertainty=shift, got {item!r}")
    if len(set(varied)) != len(varied):
        raise ConfigError("ablate: a setting is varied twice")


def check_switches(defense: str, switches: Sequence[str], varied: Sequence[str] = ()) -> None:
    """Every switch must be a boolean hyperparameter of the defense that defaults to true."""
    check_varied(varied)
    if not switches and not varied:
        raise ConfigError("ablate: name at least one component to switch off (--off NAME) or a setting to vary "
                          "(--vary PARAM=VALUE)")
    plugin = get_registry("defense").create(defense, {}, where="defense")
    fields = {f.name: f for f in dataclasses.fields(plugin.params)}
    for name in switches:
        value = getattr(plugin.params, name, None)
        if name not in fields or not isinstance(value, bool) or value is not True:
            bools = [n for n in fields if getattr(plugin.params, n) is True]
            raise ConfigError(
                f"ablate: {name!r} is not a component switch of {defense} (switches that default to "
                f"true: {', '.join(bools) or 'none'})"
            )
    if len(set(switches)) != len(switches):
        raise ConfigError("ablate: a component is named twice")


@dataclass
class AblationPlan:
    runs: list[tuple[Variant, int, RunPlan]]
    done: list[tuple[Variant, int]]
    results: Path


def plan_ablation(
    defense: str,
    switches: Sequence[str],
    seeds: Sequence[int],
    *,
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    results_dir: str | None = None,
    varied: Sequence[str] = (),
) -> AblationPlan:
    """Plan every (variant, seed) run; bad input fails here, before any training."""
    check_switches(defense, switches, varied)
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"ablate: seeds must be distinct non-negative integers, got {list(seeds)}")
    root = Path(results_dir).expanduser() if results_dir else results_root(None) / "ablations" / defense
    flags = {**(flags or {}), "defense": {"name": defense}, "results_dir": str(root)}
    runs = []
    for variant in variants(switches, varied):
        for seed in seeds:
            extra = [f"defense.{name}=false" for name in variant.off] + [f"defense.{c}" for c in variant.changes]
            extra.append(f"seed={seed}")
            runs.append((variant, seed, plan_run(validate(resolve(config_file, flags, [*overrides, *extra])))))
    first = runs[0][2]  # every variant shares the dataset and threat model, so one folder
    recorded = recorded_runs(record_dir(first.results_root, first.names["data"], first.threat.slug))
    todo: list[tuple[Variant, int, RunPlan]] = []
    done: list[tuple[Variant, int]] = []
    for variant, seed, plan in runs:
        if (config_hash(plan.resolved), seed) in recorded:
            done.append((variant, seed))
        else:
            todo.append((variant, seed, plan))
    return AblationPlan(todo, done, root)
