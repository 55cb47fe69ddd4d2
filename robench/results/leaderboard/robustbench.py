"""One run as a RobustBench ``model_info`` entry (``model_info/<dataset>/<norm>/<name>.json``).

Field names and conventions follow RobustBench's own entries: accuracies as strings
with two decimals, eps as the exact fraction, ``reported`` the robust accuracy the
entry claims (here robench's own AutoAttack measurement; there is no paper number),
and ``unreliable`` when the evaluation raised a flag. RobustBench ranks by AutoAttack
only: a run exports when its own suite had AutoAttack or when a ``robench eval`` report
evaluated its reported checkpoint with AutoAttack (:mod:`robench.results.leaderboard.evaluations`);
otherwise the refusal gives the ``robench eval`` command that makes it exportable.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from robench.api.errors import UserError
from robench.evaluation.sequential import WORST_CASE
from robench.results.labels import AUTOATTACK, CLEAN
from robench.results.leaderboard.evaluations import reported_epoch
from robench.results.leaderboard.table import flags
from robench.results.records import RunRecord


def model_info(
    record: RunRecord,
    *,
    name: str | None = None,
    link: str = "",
    authors: str = "",
    venue: str = "",
    additional_data: bool = False,
    results_root: Path | None = None,
) -> dict[str, Any]:
    """The entry, from ``record`` as the board shows it (completed by its reports)."""
    if AUTOATTACK not in record.accuracy:
        raise UserError(_no_autoattack(record, results_root))
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
            f"{record.threat['norm']} eps {record.threat['eps']}"
            + (f"; AutoAttack from evaluation report {record.eval['report']}" if record.eval.get("report") else "")
            + ")."
        ),
        "unreliable": bool(flags(record)),
    }


def _no_autoattack(record: RunRecord, results_root: Path | None) -> str:
    """Why the run cannot be exported, and the command that makes it exportable."""
    epoch = reported_epoch(record)
    checkpoint = f"{record.selected} checkpoint" + (f" (epoch {epoch})" if epoch is not None else "")
    suite = ", ".join(k for k in record.accuracy if k not in (CLEAN, WORST_CASE))
    where = f" in {results_root / 'evaluations'}" if results_root is not None else ""
    text = (f"run {record.run_id} has no AutoAttack result for its {checkpoint} at {record.threat['norm']} "
            f"eps {record.threat['eps']}, neither in its record (suite: {suite}) nor in an evaluation "
            f"report{where}; RobustBench entries need AutoAttack")
    path = Path(record.run_dir) / f"{record.selected}.pt" if record.run_dir else None
    if path is None or not path.is_file():
        return (f"{text}; its checkpoint {path or record.selected + '.pt'} is not there any more: run "
                f"robench eval --checkpoint <a copy of it>{_results_flag(results_root)} and export again")
    return (f"{text}; evaluate it with AutoAttack, then export again: "
            f"robench eval --checkpoint {shlex.quote(str(path))}{_results_flag(results_root)}")


def _results_flag(results_root: Path | None) -> str:
    return f" --results-dir {shlex.quote(str(results_root))}" if results_root is not None else ""
