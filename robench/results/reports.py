"""Evaluation reports: what ``robench eval`` measured on a saved model, one immutable
JSON file each, beside the run records.

A run record never changes after the run; a later, stronger evaluation of the same
checkpoint (AutoAttack on a run whose own suite skipped it) is a report that names the
run and the epoch it evaluated. Reports live under
``<results>/evaluations/<dataset>/<threat slug>/<report id>.json``, where leaderboards
and the RobustBench export find them next to the records they belong to.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.api.io import file_safe
from robench.results.records import SkippedRecord, check_schema, load_json_files

REPORT_SCHEMA_VERSION = 2
#: the folder of the results root that holds the reports
REPORTS_FOLDER = "evaluations"


@dataclass(frozen=True)
class EvalReport:
    report_id: str
    created: str
    robench_version: str
    git_commit: str | None
    checkpoint: str
    checkpoint_sha256: str
    #: the run that wrote the checkpoint ("" for weights robench did not save)
    source_run_id: str
    #: ``best``, ``last`` or the file's name without ``.pt``; and the epoch it holds
    source_checkpoint: str
    source_epoch: int | None
    dataset: str
    arch: str
    defense: str
    threat: dict[str, Any]
    seed: int
    eval: dict[str, Any]
    accuracy: dict[str, float]
    wall_time_s: float
    device: str
    config: dict[str, Any]
    schema_version: int = REPORT_SCHEMA_VERSION
    #: numerics switches in force (robench.engine.backend)
    backend: dict[str, Any] | None = None
    #: the machine the evaluation ran on, as in a run record's; None in older reports
    machine: dict[str, Any] | None = None

    @property
    def threat_slug(self) -> str:
        return f"{self.threat['norm'].lower()}-{str(self.threat['eps']).replace('/', '_')}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> EvalReport:
        """Validate and build; raises ValueError with the reason."""
        check_schema(cls, data, REPORT_SCHEMA_VERSION)
        return cls(**data)


def report_dir(results_root: Path, dataset: str, threat_slug: str) -> Path:
    return results_root / REPORTS_FOLDER / dataset / threat_slug


def new_report_id(source_run_id: str, checkpoint: str) -> str:
    """Readable and unique: ``<run id or 'weights'>-<checkpoint>-eval-<time>-<suffix>``, so
    a folder lists each run's reports together, oldest first."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{file_safe(source_run_id or 'weights')}-{file_safe(checkpoint)}-eval-{stamp}-{secrets.token_hex(2)}"


def load_reports(folder: Path) -> tuple[list[EvalReport], list[SkippedRecord]]:
    """All valid reports below ``folder`` (sorted by path), and the ones skipped with why."""
    return load_json_files(folder, EvalReport.from_dict)
