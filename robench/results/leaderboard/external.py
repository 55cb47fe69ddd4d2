"""Networks robench did not train, as boards show them.

``robench eval --model pkg.mod:factory`` (or ``--weights`` with ``--arch``) writes a
report that comes from no run. Written beside a board's records, it shows on that
board as an external row: apart from the ranked runs, since it has no seeds, no
training cost and perhaps another suite or number of test points, so it is neither
ranked with them nor tested against them. One row per evaluated model (the sha256 of
what was evaluated); the newest report of it wins.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from robench.evaluation.sequential import WORST_CASE
from robench.results.reports import EvalReport, load_reports

#: what a report of a model robench did not build names as its defense
EXTERNAL = "external"


@dataclass(frozen=True)
class ExternalRow:
    model: str
    dataset: str
    threat_slug: str
    norm: str
    eps: str
    accuracy: dict[str, float]
    n_test: int | None
    flags: tuple[str, ...]
    report_id: str

    @property
    def threat(self) -> str:
        """``Linf 8/255``."""
        return f"{self.norm} {self.eps}"

    @property
    def ranking(self) -> float:
        """AutoAttack where the suite had it, else the worst case (for ordering only)."""
        return self.accuracy.get("AutoAttack", self.accuracy.get(WORST_CASE, -1.0))


def model_label(report: EvalReport) -> str:
    """``my_models:build`` (``+ weights.safetensors``), or ``wrn-34-10 (model-wideres-epoch76)``."""
    if report.defense == EXTERNAL:
        return report.source_checkpoint or report.arch
    return f"{report.arch} ({report.source_checkpoint})"


def external_rows(reports: Sequence[EvalReport]) -> list[ExternalRow]:
    """The reports that come from no run, the newest per evaluated model, best first."""
    newest: dict[str, EvalReport] = {}
    for report in sorted((r for r in reports if not r.source_run_id), key=lambda r: (r.created, r.report_id)):
        newest[report.checkpoint_sha256] = report
    rows = [ExternalRow(
        model=model_label(r), dataset=r.dataset, threat_slug=r.threat_slug,
        norm=str(r.threat["norm"]), eps=str(r.threat["eps"]), accuracy=dict(r.accuracy),
        n_test=r.eval.get("n") if isinstance(r.eval.get("n"), int) else None,
        flags=tuple(str(f) for f in (r.eval.get("flags") or [])), report_id=r.report_id,
    ) for r in newest.values()]
    return sorted(rows, key=lambda row: (-row.ranking, row.model, row.report_id))


def external_in(reports_folder: Path) -> list[ExternalRow]:
    """The external rows of the reports below ``reports_folder`` (unreadable reports are
    the boards' own loaders' to report)."""
    reports, _ = load_reports(reports_folder)
    return external_rows(reports)
