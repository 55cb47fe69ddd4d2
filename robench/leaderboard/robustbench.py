"""One run as a RobustBench ``model_info`` entry (``model_info/<dataset>/<norm>/<name>.json``).

Field names and conventions follow RobustBench's own entries: accuracies as strings
with two decimals, eps as the exact fraction, ``reported`` the robust accuracy the
entry claims (here robench's own AutoAttack measurement; there is no paper number),
and ``unreliable`` when the evaluation raised a flag. A run without AutoAttack in
its suite cannot be exported: RobustBench ranks by AutoAttack only.
"""
from __future__ import annotations

from typing import Any

from robench.errors import UserError
from robench.leaderboard.table import AUTOATTACK, CLEAN, flags
from robench.records import RunRecord


def model_info(
    record: RunRecord,
    *,
    name: str | None = None,
    link: str = "",
    authors: str = "",
    venue: str = "",
    additional_data: bool = False,
) -> dict[str, Any]:
    if AUTOATTACK not in record.accuracy:
        raise UserError(
            f"run {record.run_id} has no AutoAttack result (its suite: "
            f"{', '.join(k for k in record.accuracy if k != CLEAN)}); RobustBench entries need "
            f"AutoAttack: robench eval --checkpoint <run folder>/{record.selected}.pt"
        )
    n = record.eval.get("n")
    return {
        "link": link,
        "name": name or f"robench {record.defense['name']} {record.arch['name']} (seed {record.seed})",
        "authors": authors,
        "additional_data": additional_data,
        "number_forward_passes": 1,
        "dataset": record.dataset,
        "venue": venue,
        "architecture": record.arch["name"],
        "eps": str(record.threat["eps"]),
        "clean_acc": f"{record.accuracy[CLEAN]:.2f}",
        "reported": f"{record.accuracy[AUTOATTACK]:.2f}",
        "autoattack_acc": f"{record.accuracy[AUTOATTACK]:.2f}",
        "footnote": (
            f"Measured by robench {record.robench_version} (run {record.run_id}, commit {record.git_commit}, "
            f"{record.selected} checkpoint, {n} {record.eval.get('split', 'test')} points, "
            f"{record.threat['norm']} eps {record.threat['eps']})."
        ),
        "unreliable": bool(flags(record)),
    }
