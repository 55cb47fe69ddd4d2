"""``robench tune``: the same tuning budget for every defense, chosen on validation only.

``spec`` reads tuning files; this module plans the two stages as sweeps (each trial x
tuning seed, validated only, into ``<results>/tuning/<name>/``; then the chosen
settings x fresh seeds into the board) and gathers the trials' scores; ``selection``
chooses and writes what was chosen and why. Running the points is the sweep runners'
work, so tuning resumes, skips recorded runs and keeps to a budget as sweeps do.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.api.errors import ConfigError
from robench.api.io import file_safe
from robench.core.paths import results_root
from robench.results.records import load_records
from robench.workflows.sweep.plan import SweepPlan, SweepPoint, plan_sweep
from robench.workflows.tune.divergence import Divergence, load_diverged
from robench.workflows.tune.selection import Trial, trial_scores
from robench.workflows.tune.spec import Candidate, Setting, TuneSpec, trial_sweep

__all__ = ["PlannedTrial", "TuningPlan", "gather", "plan_tuning", "tuning_folder"]


def tuning_folder(results_dir: str | Path | None, name: str) -> Path:
    """Where a tuning's records and choices go: apart from the boards they would otherwise join."""
    return results_root(results_dir) / "tuning" / file_safe(name)


@dataclass(frozen=True)
class PlannedTrial:
    candidate: Candidate
    setting: Setting
    plan: SweepPlan

    @property
    def config_hash(self) -> str:
        return self.plan.points[0].config_hash


@dataclass(frozen=True)
class TuningPlan:
    folder: Path
    trials: tuple[PlannedTrial, ...]
    #: runs noted as diverged (``diverged.json``): outcomes, not to be trained again
    diverged: Mapping[tuple[str, int], Divergence]

    @property
    def points(self) -> list[SweepPoint]:
        return [p for t in self.trials for p in t.plan.points]

    @property
    def todo(self) -> list[SweepPoint]:
        return [p for t in self.trials for p in t.plan.todo if (p.config_hash, p.seed) not in self.diverged]


def plan_tuning(spec: TuneSpec, flags: Mapping[str, Any], runs_dir: str | Path | None = None) -> TuningPlan:
    """Every trial planned as a sweep of its tuning seeds, recording into the tuning folder."""
    folder = tuning_folder(flags.get("results_dir"), spec.name)
    here = {**flags, "results_dir": str(folder)}
    trials = tuple(PlannedTrial(c, s, plan_sweep(trial_sweep(spec, c, s), flags=here, runs_dir=runs_dir))
                   for c in spec.candidates for s in c.trials)
    seen: dict[str, PlannedTrial] = {}
    for t in trials:
        other = seen.setdefault(t.config_hash, t)
        if other is not t:
            raise ConfigError(f"tuning {spec.name}: {_named(other)} and {_named(t)} are the same run; "
                              "list settings that differ")
    return TuningPlan(folder, trials, load_diverged(folder))


def _named(trial: PlannedTrial) -> str:
    return f"{trial.candidate.label} with {', '.join(f'{k}={v}' for k, v in trial.setting)}"


def gather(spec: TuneSpec, plan: TuningPlan) -> dict[str, list[Trial]]:
    """Each candidate's trials with the scores their records hold and the seeds that
    diverged (complete or not)."""
    folders = {p.record_dir for p in plan.points}
    records = [r for folder in sorted(folders) for r in load_records(folder)[0]]
    diverged = load_diverged(plan.folder)
    out: dict[str, list[Trial]] = {}
    for t in plan.trials:
        scores = trial_scores(records, t.config_hash, spec.tuning_seeds, spec.score)
        lost = {s: diverged[t.config_hash, s].reason for s in spec.tuning_seeds
                if (t.config_hash, s) in diverged and s not in scores}
        out.setdefault(t.candidate.label, []).append(
            Trial(t.candidate.label, dict(t.setting), scores, t.config_hash, lost))
    return out
