"""Runs as the boards show them: each record, completed by a later evaluation report.

Records never change, and a run whose own suite had no AutoAttack (every default
digits run) would stay unranked by it and could never be exported to RobustBench. A
report from ``robench eval`` that evaluated the *same weights* (the run's reported
checkpoint: same run id and epoch) under the *same threat model* with AutoAttack takes
the place of the run's own evaluation on the board; the newest such report wins. The
row says so (its checkpoint column and notes), and the record file is untouched. Where
the report names the machine it ran on, the shown evaluation keeps its kind
(``report_machine``): the board's paired tests compare where runs were evaluated too.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from robench.api.threat import parse_fraction
from robench.results.labels import AUTOATTACK
from robench.results.records import RunRecord, machine_kind
from robench.results.reports import EvalReport


def _same_threat(record: RunRecord, report: EvalReport) -> bool:
    return (str(record.threat["norm"]) == str(report.threat["norm"])
            and parse_fraction(record.threat["eps"]) == parse_fraction(report.threat["eps"]))


def reported_epoch(record: RunRecord) -> int | None:
    """The epoch of the checkpoint the record reports (None in records without one)."""
    entry = record.checkpoints.get(record.selected) or {}
    epoch = entry.get("epoch")
    return int(epoch) if isinstance(epoch, int) else None


def report_for(record: RunRecord, reports: Sequence[EvalReport]) -> EvalReport | None:
    """The newest report with AutoAttack on the record's reported weights and threat."""
    epoch = reported_epoch(record)
    matching = [r for r in reports if r.source_run_id == record.run_id and epoch is not None
                and r.source_epoch == epoch and AUTOATTACK in r.accuracy and _same_threat(record, r)]
    return max(matching, key=lambda r: (r.created, r.report_id), default=None)


def _machine_of(report: EvalReport) -> dict[str, str]:
    """``{"report_machine": kind}`` for a report that names its machine; nothing for older ones."""
    kind = machine_kind(report)
    return {"report_machine": kind} if kind else {}


def with_reports(records: Sequence[RunRecord], reports: Sequence[EvalReport]) -> list[RunRecord]:
    """``records``, each without AutoAttack replaced in memory by its report's evaluation."""
    shown = []
    for record in records:
        report = None if AUTOATTACK in record.accuracy else report_for(record, reports)
        if report is None:
            shown.append(record)
            continue
        shown.append(dataclasses.replace(
            record,
            accuracy=dict(report.accuracy),
            eval={**report.eval, "report": report.report_id, **_machine_of(report)},
            notes=[*record.notes, f"evaluated by robench eval report {report.report_id} ({report.created})"],
        ))
    return shown
