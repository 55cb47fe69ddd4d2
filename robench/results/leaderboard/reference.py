"""Published numbers ("reported" rows): kept in their own files, each row with its source.

A leaderboard shows them in a table of their own, under the measured one, so a number
robench measured and a number a paper printed can never be confused. Files live in
``<results>/reference/*.yaml``:

.. code-block:: yaml

    dataset: cifar10
    threat: {norm: Linf, eps: 8/255}
    rows:
      - {defense: trades, arch: WRN-34-10, clean: 85.48, autoattack: 53.80,
         source: "Pang et al. 2021, Bag of Tricks for AT, README"}

``clean`` and ``autoattack`` may be null (not published); ``other`` maps further
published accuracies (e.g. ``PGD-10: 56.19``); ``note`` says anything else a reader
needs (seeds, epochs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robench.api.errors import ConfigError
from robench.api.threat import ThreatModel
from robench.results.records import SkippedRecord

REFERENCE_DIR = "reference"


@dataclass(frozen=True)
class ReportedRow:
    dataset: str
    norm: str
    eps: str
    defense: str
    arch: str
    source: str
    clean: float | None = None
    autoattack: float | None = None
    other: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def threat_slug(self) -> str:
        return ThreatModel(self.norm, self.eps).slug


def _percent(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{what} must be a percentage in [0, 100] or null, got {value!r}")
    return float(value)


def parse_reference(data: Any) -> list[ReportedRow]:
    """Validate one reference file's content; raises ValueError with the reason."""
    if not isinstance(data, dict) or not {"dataset", "threat", "rows"} <= set(data):
        raise ValueError("expected a mapping with dataset, threat and rows")
    threat = data["threat"]
    if not isinstance(threat, dict) or not {"norm", "eps"} <= set(threat):
        raise ValueError("threat needs norm and eps")
    exact = ThreatModel(str(threat["norm"]), str(threat["eps"]))
    if not isinstance(data["rows"], list) or not data["rows"]:
        raise ValueError("rows must be a non-empty list")
    rows = []
    for i, row in enumerate(data["rows"], 1):
        if not isinstance(row, dict):
            raise ValueError(f"row {i} is not a mapping")
        unknown = set(row) - {"defense", "arch", "source", "clean", "autoattack", "other", "note"}
        if unknown:
            raise ValueError(f"row {i}: unknown fields {', '.join(sorted(unknown))}")
        if not all(isinstance(row.get(k), str) and row[k].strip() for k in ("defense", "arch", "source")):
            raise ValueError(f"row {i}: defense, arch and source must be non-empty strings")
        other = row.get("other") or {}
        if not isinstance(other, dict):
            raise ValueError(f"row {i}: other must map attack names to percentages")
        rows.append(ReportedRow(
            dataset=str(data["dataset"]), norm=exact.norm, eps=exact.eps, defense=row["defense"], arch=row["arch"],
            source=row["source"].strip(), clean=_percent(row.get("clean"), f"row {i}: clean"),
            autoattack=_percent(row.get("autoattack"), f"row {i}: autoattack"),
            other={str(k): _percent(v, f"row {i}: {k}") for k, v in other.items()},  # type: ignore[misc]
            note=str(row.get("note") or ""),
        ))
    return rows


def load_reported(results_root: Path) -> tuple[list[ReportedRow], list[SkippedRecord]]:
    """Every reported row under ``<results>/reference/``, and the files skipped with why."""
    rows: list[ReportedRow] = []
    skipped: list[SkippedRecord] = []
    folder = results_root / REFERENCE_DIR
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            rows += parse_reference(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, ConfigError) as exc:
            skipped.append(SkippedRecord(path, " ".join(str(exc).split())))
    return rows, skipped
