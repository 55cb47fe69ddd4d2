"""How a run record is named and which accuracy ranks it, wherever robench shows runs.

The boards (:mod:`robench.results.leaderboard`), the figures
(:mod:`robench.results.plots`) and ``robench compare`` must call a run and rank runs
the same way, so that a figure and the board beside it tell the same story; both
build on this module, which imports neither.
"""
from __future__ import annotations

from collections.abc import Iterable

from robench.api.threat import ThreatModel
from robench.evaluation.sequential import WORST_CASE
from robench.results.records import RunRecord

#: the accuracy key of AutoAttack's standard version in a record
AUTOATTACK = "AutoAttack"
CLEAN = "clean"


def defense_label(rec: RunRecord) -> str:
    """``trades`` or, with hyperparameters away from the defaults, ``trades (beta=1.0)``."""
    changed = rec.defense.get("changed") or {}
    if not isinstance(changed, dict) or not changed:
        return rec.defense["name"]
    values = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(changed.items()))
    return f"{rec.defense['name']} ({values})"


def threat_label(rec: RunRecord) -> str:
    return f"{rec.threat['norm']} {rec.threat['eps']}"


def threat_title(rec: RunRecord) -> str:
    """``Linf eps=3/16``, as a board's title writes the threat model."""
    return str(ThreatModel(rec.threat["norm"], str(rec.threat["eps"])))


def ranking_rule(records: Iterable[RunRecord]) -> tuple[str, str]:
    """(accuracy key, label) that ranks these runs: AutoAttack when every run has it."""
    recs = list(records)
    if recs and all(AUTOATTACK in r.accuracy for r in recs):
        return AUTOATTACK, AUTOATTACK
    last = [a for r in recs for a in r.accuracy if a not in (CLEAN, WORST_CASE)][-1:] or ["clean"]
    return WORST_CASE, f"worst case ({last[0]}; no AutoAttack)"
