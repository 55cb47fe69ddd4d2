"""``robench compare BASE VARIANT``: is a variant of a method at most a margin worse?

Both are rows of one board, named by their labels as the board shows them (``uadat``,
``uadat (align_fraction=0.25)``). Their runs are paired by seed (the same initial
weights and data order) and the mean difference of one accuracy is tested against
the margin, one-sided (:func:`~robench.results.leaderboard.significance.noninferiority`):
the question a cheaper default has to answer before it replaces the method. Seeds whose
runs ran on different machine kinds are named, since pairing does not remove what
other hardware changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robench.api.errors import UserError
from robench.results.labels import defense_label, ranking_rule
from robench.results.leaderboard import Filters, load_shown
from robench.results.leaderboard.significance import NonInferiority, crossed_machines, noninferiority
from robench.results.leaderboard.table import EXPERIMENT, machines_by_seed, runs_frame
from robench.results.records import RunRecord
from robench.results.reports import REPORTS_FOLDER


@dataclass(frozen=True)
class Comparison:
    board: str
    metric: str
    base: str
    variant: str
    base_by_seed: dict[int, float]
    variant_by_seed: dict[int, float]
    #: None below two shared seeds
    result: NonInferiority | None
    #: shared seeds whose runs ran on different machine kinds: seed -> (base's kinds,
    #: variant's kinds); seeds whose kinds are not known are not in it
    crossed: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)


def _experiment(records: list[RunRecord], label: str) -> list[RunRecord]:
    """The runs of the one experiment whose board label is ``label``."""
    mine = [r for r in records if defense_label(r) == label]
    groups = runs_frame(mine).groupby(EXPERIMENT).groups if mine else {}
    if not groups:
        known = sorted({defense_label(r) for r in records})
        raise UserError(f"no row {label!r} among the selected runs; rows: {', '.join(known) or 'none'}")
    if len(groups) > 1:
        where = "; ".join(", ".join(str(part) for part in key[:2] + key[3:4]) for key in groups)
        raise UserError(f"{len(groups)} experiments are labelled {label!r} ({where}); choose one with "
                        "--data, --threat or --arch")
    return mine


def compare(results_root: Path, base: str, variant: str, *, filters: Filters,
            metric: str | None = None, margin: float = 1.0) -> Comparison:
    records, _ = load_shown(results_root / "records", results_root / REPORTS_FOLDER)
    chosen = filters.apply(records)
    a, b = _experiment(chosen, base), _experiment(chosen, variant)
    if (a[0].dataset, a[0].threat_slug) != (b[0].dataset, b[0].threat_slug):
        raise UserError(f"{base!r} is on {a[0].dataset} {a[0].threat_slug} and {variant!r} on "
                        f"{b[0].dataset} {b[0].threat_slug}: compare rows of one board")
    key = metric or ranking_rule([*a, *b])[0]
    missing = [r.run_id for r in (*a, *b) if key not in r.accuracy]
    if missing:
        raise UserError(f"run {missing[0]} has no {key!r} accuracy; choose --metric among "
                        f"{', '.join(a[0].accuracy)}")
    by_seed = [{r.seed: float(r.accuracy[key]) for r in runs} for runs in (a, b)]
    machines = [machines_by_seed(runs_frame(runs)) for runs in (a, b)]
    return Comparison(f"{a[0].dataset}, {a[0].threat_slug}", key, base, variant, by_seed[0], by_seed[1],
                      noninferiority(by_seed[0], by_seed[1], margin), crossed_machines(*machines))
