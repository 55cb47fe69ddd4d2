"""Run records: one immutable JSON file per run, with a versioned dataclass schema.

Records live under ``<results>/records/<dataset>/<threat slug>/<run id>.json``; they
are the only input of leaderboards, so every number shown can be traced to a run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from robench.api.io import atomic_write_text, file_safe

SCHEMA_VERSION = 2
T = TypeVar("T")
#: the checkpoints a run evaluates: best validation PGD accuracy, and the last epoch
CHECKPOINT_NAMES = ("best", "last")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    created: str
    robench_version: str
    git_commit: str | None
    dataset: str
    arch: dict[str, Any]
    defense: dict[str, Any]
    threat: dict[str, Any]
    seed: int
    train: dict[str, Any]
    #: the reported checkpoint's evaluation section (suite, flags, checks, sweep)
    eval: dict[str, Any]
    #: the reported checkpoint's accuracies in percent: "clean" first, then one
    #: cumulative entry per attack (the last is the worst case)
    accuracy: dict[str, float]
    history: list[dict[str, Any]]
    wall_time_s: float
    device: str
    config_hash: str
    config: dict[str, Any]
    #: "best" and/or "last": {"epoch", "val_clean", "val_pgd", "accuracy", "eval"} each
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: which checkpoint ``accuracy`` and ``eval`` repeat (train.select, or "last" without
    #: a validation split); leaderboards report it
    selected: str = "last"
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)
    #: numerics switches in force (robench.engine.backend): deterministic kernels,
    #: cuDNN autotuning, TF32 in training and in the final evaluation; None in older records
    backend: dict[str, Any] | None = None
    #: the folder the dataset was read from (the first of the data search order that
    #: had it; `robench data where NAME` shows the order); None in older records
    data_dir: str | None = None
    #: processes that trained the model and whether BatchNorm saw the global batch
    #: (``engine.sync_bn``); both enter ``config_hash`` above one process; None in older records
    distributed: dict[str, Any] | None = None
    #: the run folder with its checkpoints, as written (None in older records)
    run_dir: str | None = None
    #: training cost per image and epoch as the defense counts it: forward-pass
    #: equivalents and FLOPs (None in older records and for defenses that do not count)
    cost: dict[str, float] | None = None
    #: the reported checkpoint's validation scores, {"epoch", "val_clean", "val_pgd"};
    #: what ``robench tune`` selects by (None in older records and without a validation split)
    validation: dict[str, Any] | None = None
    #: the machine the run ran on (robench.engine.machine.describe_machine): CPU model,
    #: SIMD features, threads, torch version, GPU; None in older records
    machine: dict[str, Any] | None = None

    @property
    def evaluated(self) -> bool:
        """Whether the test set was evaluated (not for ``eval.checkpoints: none``, as in tuning runs)."""
        return bool(self.accuracy)

    @property
    def threat_slug(self) -> str:
        return f"{self.threat['norm'].lower()}-{str(self.threat['eps']).replace('/', '_')}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """Validate and build; raises ValueError with the reason."""
        if isinstance(data, dict) and data.get("schema_version") == 1:
            data = _from_v1(data)
        check_schema(cls, data, SCHEMA_VERSION, unevaluated=_validated_only(data))
        for key in ("arch", "defense", "train"):
            if not isinstance(data[key], dict):
                raise ValueError(f"{key} must be an object")
        if not isinstance(data["defense"].get("name"), str) or not isinstance(data["arch"].get("name"), str):
            raise ValueError("defense.name and arch.name must be strings")
        checkpoints = data.get("checkpoints") or {}
        if (not isinstance(checkpoints, dict) or not set(checkpoints) <= set(CHECKPOINT_NAMES)
                or not all(isinstance(v, dict) for v in checkpoints.values())):
            raise ValueError(f"checkpoints must map {' and/or '.join(CHECKPOINT_NAMES)} to results")
        selected = data.get("selected", "last")
        if checkpoints and (selected not in checkpoints or checkpoints[selected].get("accuracy") != data["accuracy"]):
            raise ValueError(f"accuracy does not match the selected checkpoint {selected!r}")
        return cls(**data)


def _validated_only(data: Any) -> bool:
    """A run made with ``eval.checkpoints: none`` (tuning): trained and validated, no test accuracy."""
    config = data.get("config") if isinstance(data, dict) else None
    evaluation = config.get("eval") if isinstance(config, dict) else None
    return isinstance(evaluation, dict) and evaluation.get("checkpoints") == "none" and not data.get("checkpoints")


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 records evaluated the last epoch only."""
    data = {**data, "schema_version": SCHEMA_VERSION, "selected": "last"}
    epochs = (data.get("train") or {}).get("epochs") if isinstance(data.get("train"), dict) else None
    data["checkpoints"] = {"last": {"epoch": epochs, "accuracy": data.get("accuracy"), "eval": data.get("eval")}}
    return data


class _RanOnAMachine(Protocol):
    """A run record or an evaluation report: both name the machine they were made on."""

    @property
    def machine(self) -> dict[str, Any] | None: ...


def machine_kind(result: _RanOnAMachine) -> str | None:
    """A short, stable name of the hardware a record or report was made on: the CPU model,
    a digest of its SIMD features and the GPU. Two results compare as made on the same
    kind exactly when those agree, since the same seed and config can give other numbers
    on other hardware; the thread count and the torch build are left out. None where the
    result does not say (written before robench recorded the machine)."""
    machine = result.machine
    if not isinstance(machine, dict) or not machine:
        return None
    simd = " ".join(sorted(str(f) for f in machine.get("simd") or ()))
    kind = f"{machine.get('cpu') or 'unknown CPU'} (SIMD {hashlib.sha256(simd.encode()).hexdigest()[:8]})"
    gpu = machine.get("gpu")
    return f"{kind} + {gpu}" if gpu else kind


def new_run_id(defense: str, arch: str, seed: int) -> str:
    """Sortable by time, readable, unique, and safe as a file name (``timm/vit`` -> ``timm_vit``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{file_safe(defense)}-{file_safe(arch)}-s{seed}-{secrets.token_hex(3)}"


def record_dir(results_root: Path, dataset: str, threat_slug: str) -> Path:
    return results_root / "records" / dataset / threat_slug


def write_record(record: RunRecord, results_root: Path) -> Path:
    """Write atomically; an existing record is never overwritten."""
    path = record_dir(results_root, record.dataset, record.threat_slug) / f"{record.run_id}.json"
    return atomic_write_text(path, record.to_json(), overwrite=False)


@dataclass(frozen=True)
class SkippedRecord:
    path: Path
    reason: str


def recorded_runs(folder: Path) -> set[tuple[str, int]]:
    """(config hash, seed) of every valid record below ``folder``: the runs done already."""
    records, _ = load_records(folder)
    return {(r.config_hash, r.seed) for r in records}


def load_records(folder: Path) -> tuple[list[RunRecord], list[SkippedRecord]]:
    """All valid records below ``folder`` (sorted by path), and the ones skipped with why."""
    return load_json_files(folder, RunRecord.from_dict)


def load_json_files(folder: Path, parse: Callable[[Any], T]) -> tuple[list[T], list[SkippedRecord]]:
    """Every ``*.json`` below ``folder`` (sorted by path) that ``parse`` accepts, and the
    ones it refused (or that could not be read) with why."""
    parsed: list[T] = []
    skipped: list[SkippedRecord] = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        try:
            parsed.append(parse(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as exc:
            skipped.append(SkippedRecord(path, str(exc)))
    return parsed, skipped


def check_schema(cls: type, data: Any, version: int, unevaluated: bool = False) -> None:
    """The checks a record and a report share: a JSON object of ``cls``'s fields at
    ``version``, with accuracies in percent (none at all if ``unevaluated``) and a
    threat model; ValueError says why."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("schema_version") != version:
        raise ValueError(f"schema_version {data.get('schema_version')!r}, expected {version}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    missing = [n for n, f in names.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError("missing " + ", ".join(missing))
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError("unknown fields " + ", ".join(unknown))
    for key in ("threat", "eval", "accuracy", "config"):
        if not isinstance(data[key], dict):
            raise ValueError(f"{key} must be an object")
    if (not data["accuracy"] and not unevaluated) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100
        for v in data["accuracy"].values()
    ):
        raise ValueError("accuracy must map names to percentages in [0, 100]")
    if not {"norm", "eps"} <= set(data["threat"]):
        raise ValueError("threat needs norm and eps")
