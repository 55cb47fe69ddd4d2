"""Leaderboards, built with pandas from run records and never edited by hand.

``table`` groups runs into experiments and ranks them; ``formats`` writes markdown,
CSV, LaTeX and HTML; ``reference`` reads published numbers, shown apart as
"reported"; ``evaluations`` completes a run without AutoAttack by a later ``robench
eval`` report on the same weights; ``external`` shows reports of networks robench did
not train, apart; ``robustbench`` exports one run as a RobustBench entry. The committed
boards, ``<results>/<dataset>-<threat>.md``, are rebuilt by :func:`refresh_leaderboard`
after every run and all at once by :func:`refresh_all` (``robench leaderboard --refresh``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from robench.api.io import atomic_write_text, exclusive_lock
from robench.api.threat import ThreatModel
from robench.results.labels import AUTOATTACK, defense_label, ranking_rule, threat_title
from robench.results.leaderboard.evaluations import with_reports
from robench.results.leaderboard.external import ExternalRow, external_in
from robench.results.leaderboard.formats import (
    FORMATS,
    board_title,
    render_csv,
    render_latex,
    render_markdown,
)
from robench.results.leaderboard.page import render_html
from robench.results.leaderboard.reference import ReportedRow, load_reported
from robench.results.leaderboard.table import UNRELIABLE, Filters, experiment_table, run_table
from robench.results.records import RunRecord, SkippedRecord, load_records, record_dir
from robench.results.reports import REPORTS_FOLDER, load_reports, report_dir

__all__ = [
    "AUTOATTACK", "FORMATS", "UNRELIABLE", "ExternalRow", "Filters", "ReportedRow", "external_in", "board_title", "defense_label",
    "experiment_table", "load_reported", "load_shown", "ranking_rule", "refresh_all", "refresh_leaderboard", "render_csv",
    "render_html", "render_latex", "render_markdown", "run_table",
]

#: held while a board is rebuilt (git-ignored)
LOCK_FILE = ".leaderboard.lock"


def load_shown(records_folder: Path, reports_folder: Path) -> tuple[list[RunRecord], list[SkippedRecord]]:
    """The records below ``records_folder`` as boards show them: completed by the
    evaluation reports below ``reports_folder``; with every file skipped and why."""
    records, skipped = load_records(records_folder)
    unseen = [SkippedRecord(records_folder / f"{r.run_id}.json", "no test evaluation (eval.checkpoints: none)")
              for r in records if not r.evaluated]
    reports, bad = load_reports(reports_folder)
    return with_reports([r for r in records if r.evaluated], reports), skipped + unseen + bad


def _shown(results_root: Path, dataset: str, threat_slug: str) -> tuple[list[RunRecord], list[SkippedRecord]]:
    """One board's records, completed by the evaluation reports beside them."""
    return load_shown(record_dir(results_root, dataset, threat_slug), report_dir(results_root, dataset, threat_slug))


def _write_board(
    results_root: Path, dataset: str, threat_slug: str, threat_title: str,
    records: Sequence[RunRecord], reported: Sequence[ReportedRow],
) -> Path:
    mine = [r for r in reported if r.dataset == dataset and r.threat_slug == threat_slug]
    source = record_dir(results_root, dataset, threat_slug).relative_to(results_root).as_posix()
    external = external_in(report_dir(results_root, dataset, threat_slug))
    text = render_markdown(records, f"{dataset}, {threat_title}", source, mine, external=external)
    return atomic_write_text(results_root / f"{dataset}-{threat_slug}.md", text)


def refresh_leaderboard(
    results_root: Path, dataset: str, threat_slug: str, threat_label: str
) -> tuple[Path, list[SkippedRecord]]:
    """Rebuild ``<results>/<dataset>-<threat slug>.md`` from its records and reported rows."""
    with exclusive_lock(results_root / LOCK_FILE):  # concurrent runs: the last rebuild sees every record
        records, skipped = _shown(results_root, dataset, threat_slug)
        reported, bad = load_reported(results_root)
        path = _write_board(results_root, dataset, threat_slug, threat_label, records, reported)
    return path, skipped + bad


def refresh_all(results_root: Path) -> tuple[list[Path], list[SkippedRecord]]:
    """Rebuild every board under ``results_root``: one per records folder, and one per
    reference file's or external report's dataset and threat even before any run (so
    published numbers and external models show)."""
    with exclusive_lock(results_root / LOCK_FILE):
        reported, skipped = load_reported(results_root)
        boards: dict[tuple[str, str], tuple[str, list[RunRecord]]] = {}
        base = results_root / "records"
        for folder in sorted(p for p in base.glob("*/*") if p.is_dir()) if base.is_dir() else []:
            records, bad = _shown(results_root, folder.parent.name, folder.name)
            skipped += bad
            title = threat_title(records[0]) if records else folder.name
            boards[(folder.parent.name, folder.name)] = (title, records)
        rows: list[ReportedRow | ExternalRow] = [*reported, *external_in(results_root / REPORTS_FOLDER)]
        for row in rows:  # boards of no run yet
            boards.setdefault((row.dataset, row.threat_slug), (str(ThreatModel(row.norm, row.eps)), []))
        paths = [_write_board(results_root, dataset, slug, title, records, reported)
                 for (dataset, slug), (title, records) in sorted(boards.items())]
    return paths, skipped
