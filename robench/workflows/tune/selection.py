"""Choosing each candidate's setting from its trials' validation scores, and saying so.

A trial's score is the mean over the tuning seeds of the validation accuracy (``score``,
robust by default) at the checkpoint the run reports, as its record keeps it. The
highest mean wins; on a tie, the trial listed first. A trial whose training diverged
with any tuning seed is not chosen: a setting that is unstable with one seed in two is
not one to recommend, whatever the other seed scored. Nothing here reads a test
accuracy: tuning records have none.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robench.api.errors import ConfigError
from robench.api.io import atomic_write_text
from robench.results.records import RunRecord
from robench.workflows.sweep.grid import CONFIG_AXIS, SweepSpec
from robench.workflows.tune.spec import Candidate, Setting, TuneSpec

#: what ``robench tune`` writes beside the tuning records
SELECTION_FILE, SUMMARY_FILE, FINAL_SWEEP_FILE = "selection.json", "tuning.md", "final-sweep.yaml"


@dataclass(frozen=True)
class Trial:
    candidate: str
    setting: dict[str, Any]
    #: tuning seed -> the validation score of its run (seeds without a record yet are absent)
    scores: dict[int, float]
    config_hash: str
    #: tuning seed -> where its training diverged (no record, no score)
    diverged: dict[int, str] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Over the seeds with a score; NaN without any."""
        return statistics.fmean(self.scores.values()) if self.scores else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores.values()) if len(self.scores) > 1 else 0.0


def trial_scores(records: Sequence[RunRecord], config_hash: str, seeds: Sequence[int], score: str) -> dict[int, float]:
    """Each tuning seed's validation score of the runs with ``config_hash``; missing seeds are left out."""
    found: dict[int, float] = {}
    for record in records:
        if record.config_hash != config_hash or record.seed not in seeds:
            continue
        value = (record.validation or {}).get(score)
        if value is None:
            raise ConfigError(f"record {record.run_id} has no validation {score}: tuning needs a validation split "
                              "(for digits, data.val_size above 0)")
        found[record.seed] = float(value)
    return found


def choose(trials: Sequence[Trial]) -> Trial:
    """The trial with the highest mean score among those that never diverged; the first
    listed on a tie."""
    stable = [t for t in trials if not t.diverged]
    if not stable:
        name = trials[0].candidate if trials else "a candidate"
        raise ConfigError(f"every setting of {name} diverged with some tuning seed ({len(trials)} tried); "
                          "give it a space of smaller steps, weights or learning rates")
    return max(stable, key=lambda t: t.mean)  # max keeps the first of equals


def write_selection(folder: Path, spec: TuneSpec, trials: Mapping[str, Sequence[Trial]],
                    chosen: Mapping[str, Trial]) -> None:
    """``selection.json`` (every trial, every seed) and ``tuning.md`` (the same, for reading)."""
    data = {
        "name": spec.name, "score": spec.score, "trials_per_candidate": spec.trials,
        "tuning_seeds": list(spec.tuning_seeds), "final_seeds": list(spec.final_seeds),
        "candidates": [{
            "label": c.label, "defense": c.defense, "fixed": dict(c.fixed),
            "chosen": dict(chosen[c.label].setting) if c.label in chosen else None,
            "trials": [{**asdict(t), "mean": t.mean if t.scores else None, "std": t.std}
                       for t in trials.get(c.label, ())],
        } for c in spec.candidates],
    }
    atomic_write_text(folder / SELECTION_FILE, json.dumps(data, indent=2) + "\n")
    atomic_write_text(folder / SUMMARY_FILE, _summary(spec, trials, chosen))


def _summary(spec: TuneSpec, trials: Mapping[str, Sequence[Trial]], chosen: Mapping[str, Trial]) -> str:
    seeds = ", ".join(map(str, spec.tuning_seeds))
    lines = [
        f"# Tuning: {spec.name}", "",
        f"Each tuned candidate tried {spec.trials} settings, each trained with seeds {seeds} and scored by "
        f"validation `{spec.score}` at the reported checkpoint (mean over seeds; the test set was not "
        f"evaluated). The chosen setting (**bold**) was then trained with fresh seeds "
        f"{', '.join(map(str, spec.final_seeds))} for the board. A setting whose training diverged "
        "(its loss became NaN or inf) with any seed is not chosen. Made by `robench tune`; do not edit.", "",
        "| candidate | setting | " + " | ".join(f"seed {s}" for s in spec.tuning_seeds) + " | mean | std |",
        "|---|---|" + "---:|" * (len(spec.tuning_seeds) + 2),
    ]
    for c in spec.candidates:
        for t in trials.get(c.label, ()):
            setting = ", ".join(f"{k}={v}" for k, v in t.setting.items())
            if chosen.get(c.label) is t:
                setting = f"**{setting}**"
            cells = [f"{t.scores[s]:.2f}" if s in t.scores else "diverged" if s in t.diverged else ""
                     for s in spec.tuning_seeds]
            mean = "diverged | " if t.diverged else f"{t.mean:.2f} | {t.std:.2f}"
            lines.append(f"| {c.label} | {setting} | " + " | ".join(cells) + f" | {mean} |")
        if not c.trials:
            lines.append(f"| {c.label} | (not tuned) | " + " | ".join("" for _ in spec.tuning_seeds) + " |  |  |")
    return "\n".join(lines) + "\n"


def write_final_sweep(path: Path, sweep: SweepSpec) -> Path:
    """The final runs as a sweep file, so that ``robench sweep FILE`` repeats (or checks) them."""
    def relative(p: Path) -> str:
        return os.path.relpath(p, path.parent)

    grid = [{k: [relative(v) for v in values] if k == CONFIG_AXIS else list(values) for k, values in product}
            for product in sweep.grids]
    data: dict[str, Any] = {"name": sweep.name}
    if sweep.config is not None:
        data["config"] = relative(sweep.config)
    data["grid"] = grid
    data["set"] = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in sweep.fixed)}
    header = "# The final runs of `robench tune`: each candidate with its chosen setting, fresh seeds.\n"
    return atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def chosen_settings(chosen: Mapping[str, Trial], candidates: Sequence[Candidate]) -> dict[str, Setting]:
    return {c.label: tuple(chosen[c.label].setting.items()) for c in candidates if c.label in chosen}
