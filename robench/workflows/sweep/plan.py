"""Planning a sweep: every grid point becomes a checked ``robench run`` command line.

Each point is planned exactly as ``robench run`` would plan it (resolve, validate,
plan_run), so a typo in any point fails the whole sweep before one run starts, and
the point's config hash and seed, which identify its record, are known up front.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robench.api.errors import ConfigError
from robench.api.io import file_safe
from robench.api.threat import ThreatModel
from robench.core.config import PLUGIN_SECTIONS, config_hash, resolve, validate
from robench.core.paths import runs_root
from robench.engine.machine import device_label
from robench.results.records import record_dir, recorded_runs
from robench.workflows.plans import plan_run
from robench.workflows.sweep.grid import SweepSpec, expand

#: what ``robench run`` calls the command-line settings a sweep passes to every run
_FLAG_OPTIONS = {"device": "--device", "data_root": "--data-root", "results_dir": "--results-dir"}


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: all a worker process or a Slurm job needs (picklable)."""

    key: str
    label: str
    #: ``--config FILE`` and ``--set`` items: the run's own settings (fresh start only)
    layers: tuple[str, ...]
    #: folders, device, ``--nproc``, ``--quiet``: valid on a fresh start and on ``--resume``
    common: tuple[str, ...]
    #: this point's run folders and log: ``<runs>/sweeps/<sweep>/<key>``
    folder: Path
    record_dir: Path
    config_hash: str
    seed: int
    #: the device as its record will name it, without the thread count (``--budget`` estimates)
    machine: str = ""
    #: (defense, architecture, dataset)
    kind: tuple[str, str, str] = ("", "", "")
    #: the data settings and epochs, which scale a run's time (``--budget`` estimates)
    shape: str = ""

    def argv(self, resume: Path | None = None) -> list[str]:
        """The ``robench`` arguments that start this run, or continue it from ``resume``."""
        if resume is not None:
            return ["run", "--resume", str(resume), *self.common]
        return ["run", *self.layers, *self.common]


@dataclass
class Board:
    results_root: Path
    dataset: str
    threat: ThreatModel


@dataclass
class SweepPlan:
    name: str
    points: list[SweepPoint]
    #: keys of the points whose record exists already
    recorded: set[str] = field(default_factory=set)
    #: grid points that turned out to be the same run as an earlier one
    duplicates: int = 0
    boards: list[Board] = field(default_factory=list)

    @property
    def todo(self) -> list[SweepPoint]:
        return [p for p in self.points if p.key not in self.recorded]


#: grid keys the label shows anyway: the plugin names and the seed
_NAMED = {"seed", *PLUGIN_SECTIONS, *(f"{s}.name" for s in PLUGIN_SECTIONS)}


def _label(names: Mapping[str, str], seed: int, items: Sequence[str]) -> str:
    own = [i for i in items if i.partition("=")[0] not in _NAMED]
    return f"{names['defense']} {names['arch']} {names['data']} seed {seed}" + (f" ({', '.join(own)})" if own else "")


def plan_sweep(
    spec: SweepSpec,
    *,
    flags: Mapping[str, Any] | None = None,
    runs_dir: str | Path | None = None,
    nproc: int | None = None,
) -> SweepPlan:
    """Plan every point of ``spec``; ``flags`` (device, data_root, results_dir) apply to all."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(flags) - set(_FLAG_OPTIONS)
    if unknown:
        raise ConfigError(f"sweep: {', '.join(sorted(unknown))} cannot be set for a whole sweep")
    common: list[str] = [x for k, v in flags.items() for x in (_FLAG_OPTIONS[k], str(v))]
    if nproc is not None and nproc > 1:
        common += ["--nproc", str(nproc)]
    base = runs_root(runs_dir) / "sweeps" / file_safe(spec.name)
    plan = SweepPlan(spec.name, [])
    seen: dict[tuple[str, int], str] = {}
    known: dict[Path, set[tuple[str, int]]] = {}
    for config, items in expand(spec):
        try:
            run = plan_run(validate(resolve(config, {**flags, "runs_dir": str(base)}, items)))
        except ConfigError as exc:
            point = " ".join([*([f"config={config.name}"] if config else []), *items[len(spec.fixed):]])
            raise ConfigError(f"sweep {spec.name}, point {point}: {exc}") from None
        ident = (config_hash(run.resolved, nproc or 1), run.config.seed)
        if ident in seen:
            plan.duplicates += 1
            continue
        names = run.names
        key = f"{file_safe(names['defense'])}-{file_safe(names['arch'])}-{file_safe(names['data'])}-s{ident[1]}-{ident[0]}"
        seen[ident] = key
        folder = record_dir(run.results_root, names["data"], run.threat.slug)
        if folder not in known:
            known[folder] = recorded_runs(folder)
            plan.boards.append(Board(run.results_root, names["data"], run.threat))
        layers = (["--config", str(config)] if config else []) + [x for i in items for x in ("--set", i)]
        planned = SweepPoint(
            key=key, label=_label(names, ident[1], items[len(spec.fixed):]), layers=tuple(layers),
            common=(*common, "--runs-dir", str(base / key), "--quiet"), folder=base / key,
            record_dir=folder, config_hash=ident[0], seed=ident[1],
            machine=_machine(run.device, nproc), kind=(names.get("defense", ""), names["arch"], names["data"]),
            shape=run_shape(run.resolved.get("data"), run.resolved.get("train", {}).get("epochs")),
        )
        plan.points.append(planned)
        if ident in known[folder]:
            plan.recorded.add(key)
    return plan


def machine(device_label: str) -> str:
    """A record's ``device`` without the thread count, which a sweep's workers change."""
    return re.sub(r", \d+ threads\)$", ")", device_label)


def run_shape(data: Any, epochs: Any) -> str:
    """A run's data settings and epochs as one comparable text: runs of one kind with the
    same shape take about as long (a training subset or fewer epochs take less)."""
    return json.dumps({"data": data or {}, "epochs": epochs}, sort_keys=True, default=str)


def _machine(device: Any, nproc: int | None) -> str:
    """The record's ``device`` for a run on ``device`` with ``nproc`` processes, thread count left out."""
    label = machine(device_label(device))
    return f"{nproc} x {label}" if nproc is not None and nproc > 1 else label
