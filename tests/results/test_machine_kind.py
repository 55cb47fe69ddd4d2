"""A record's machine kind: what the same seed and config may give other numbers on."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robench.results.records import RunRecord, machine_kind, write_record
from robench.results.reports import EvalReport

REPO = Path(__file__).resolve().parents[2]
RECORD = next(iter(sorted((REPO / "leaderboards" / "records" / "digits" / "linf-3_16").glob("*.json"))))
REPORT = REPO / "leaderboards" / "tuning" / "fashion-mnist" / "autoattack" / "mart.json"
XEON = {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "simd": ["avx", "avx2", "avx512f", "fma"],
        "threads": 8, "torch": "2.5.1+cpu", "gpu": None}


@pytest.fixture(scope="module")
def old() -> RunRecord:
    """A committed record, written before robench recorded the machine."""
    return RunRecord.from_dict(json.loads(RECORD.read_text(encoding="utf-8")))


def test_records_and_reports_from_before_the_machine_section_load_and_say_no_kind(old: RunRecord) -> None:
    report = EvalReport.from_dict(json.loads(REPORT.read_text(encoding="utf-8")))
    assert old.machine is None and report.machine is None
    assert machine_kind(old) is None and machine_kind(report) is None


def test_the_kind_follows_cpu_simd_and_gpu_not_threads_or_torch(old: RunRecord) -> None:
    def kind(**changed: object) -> str | None:
        return machine_kind(dataclasses.replace(old, machine={**XEON, **changed}))

    base = kind()
    assert base is not None and XEON["cpu"] in base
    assert kind(threads=1) == base and kind(torch="2.6.0") == base
    assert kind(simd=list(reversed(XEON["simd"]))) == base  # the features, not their order
    others = [kind(cpu="AMD EPYC 7B13 64-Core Processor"), kind(simd=["avx", "avx2", "fma"]),
              kind(gpu="NVIDIA H100 80GB HBM3"), kind(gpu="NVIDIA H200")]
    assert len({base, *others}) == 5
    assert "NVIDIA H100 80GB HBM3" in str(others[2])


def test_a_record_keeps_its_machine_through_a_write_and_a_load(old: RunRecord, tmp_path: Path) -> None:
    record = dataclasses.replace(old, machine=XEON)
    path = write_record(record, tmp_path)
    again = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    assert again.machine == XEON and machine_kind(again) == machine_kind(record)
