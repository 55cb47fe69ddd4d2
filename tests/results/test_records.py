"""Run records: schema validation, atomic immutable writes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robench.core.config import resolve, validate
from robench.results.records import RunRecord, load_records, write_record
from robench.workflows.plans import plan_run
from robench.workflows.run import execute


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> RunRecord:
    root = tmp_path_factory.mktemp("rec")
    plan = plan_run(validate(resolve(None, None, [
        "train.epochs=1", "defense.steps=1", "attacks=[pgd-2]", "eval.n_eval=50", f"results_dir={root}"])))
    return execute(plan).record


def test_record_round_trips_and_holds_provenance(record: RunRecord, tmp_path: Path) -> None:
    path = write_record(record, tmp_path)
    assert path == tmp_path / "records" / "digits" / "linf-3_16" / f"{record.run_id}.json"
    data = json.loads(path.read_text())
    assert RunRecord.from_dict(data) == record
    assert data["schema_version"] == 2 and data["robench_version"]
    assert data["config"]["defense"] == {"name": "pgd-at", "steps": 1, "step_size": None, "random_start": True}
    assert data["defense"] == {"name": "pgd-at", "params": {"steps": 1, "step_size": None, "random_start": True},
                               "changed": {"steps": 1}}
    n = data["eval"]["n"]
    assert all(round(acc * n / 100) * 100 / n == acc for acc in data["accuracy"].values())  # exact counts
    assert data["arch"]["num_params"] > 0 and data["device"].startswith("cpu")
    # PGD-AT with 1 attack step: 2F for the step, 3F for training on x'
    assert data["cost"] == {"forward_passes_per_image": 5.0, "flops_per_image": 2.0 * data["arch"]["macs"] * 5.0}
    assert not list(path.parent.glob(".*.tmp"))  # no temp files left behind


def test_records_are_never_overwritten(record: RunRecord, tmp_path: Path) -> None:
    path = write_record(record, tmp_path)
    before = path.read_bytes()
    changed = dataclasses.replace(record, accuracy={"clean": 1.0})
    with pytest.raises(FileExistsError):
        write_record(changed, tmp_path)
    assert path.read_bytes() == before


def test_invalid_records_are_reported_not_dropped(record: RunRecord, tmp_path: Path) -> None:
    good = write_record(record, tmp_path)
    folder = good.parent
    (folder / "torn.json").write_text('{"run_id": ')
    bad = json.loads(good.read_text())
    bad["accuracy"] = {"clean": 140.0}
    (folder / "bad-acc.json").write_text(json.dumps(bad))
    old = json.loads(good.read_text())
    old["schema_version"] = 0
    (folder / "old.json").write_text(json.dumps(old))
    records, skipped = load_records(tmp_path / "records")
    assert [r.run_id for r in records] == [record.run_id]
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"torn.json", "bad-acc.json", "old.json"}
    assert "percentages" in reasons["bad-acc.json"] and "schema_version" in reasons["old.json"]


def test_record_keeps_best_and_last_checkpoints(record: RunRecord) -> None:
    # one epoch: the best checkpoint is the last one, evaluated once and kept under both names
    assert set(record.checkpoints) == {"best", "last"} and record.selected == "best"
    for name in ("best", "last"):
        entry = record.checkpoints[name]
        assert entry["epoch"] == 1 and entry["accuracy"] == record.accuracy
        assert entry["val_pgd"] is not None and "flags" in entry["eval"]
    assert record.history[0]["val_clean"] == record.checkpoints["best"]["val_clean"]


def test_selected_checkpoint_must_match_the_top_level_accuracy(record: RunRecord) -> None:
    data = json.loads(record.to_json())
    data["checkpoints"]["best"] = {**data["checkpoints"]["best"], "accuracy": {"clean": 1.0}}
    with pytest.raises(ValueError, match="selected checkpoint"):
        RunRecord.from_dict(data)
    data = json.loads(record.to_json())
    data["checkpoints"]["middle"] = data["checkpoints"]["best"]
    with pytest.raises(ValueError, match="best and/or last"):
        RunRecord.from_dict(data)
    data = json.loads(record.to_json())
    data["checkpoints"]["best"] = 42.0
    with pytest.raises(ValueError, match="best and/or last"):
        RunRecord.from_dict(data)


def test_record_keeps_the_reported_checkpoints_validation_scores(record: RunRecord) -> None:
    best = record.checkpoints["best"]
    assert record.selected == "best"
    assert record.validation == {"epoch": best["epoch"], "val_clean": best["val_clean"], "val_pgd": best["val_pgd"]}


def test_only_a_validated_only_run_may_have_no_test_accuracy(record: RunRecord) -> None:
    """eval.checkpoints=none (tuning) records no test accuracy; any other record needs one."""
    data = json.loads(record.to_json())
    data.update(accuracy={}, eval={}, checkpoints={})
    with pytest.raises(ValueError, match="accuracy must map names to percentages"):
        RunRecord.from_dict(data)
    data["config"] = {**data["config"], "eval": {**data["config"]["eval"], "checkpoints": "none"}}
    assert not RunRecord.from_dict(data).evaluated and record.evaluated
    data["checkpoints"] = json.loads(record.to_json())["checkpoints"]  # but then it evaluated nothing
    with pytest.raises(ValueError, match="accuracy must map names to percentages"):
        RunRecord.from_dict(data)


def test_version_1_records_read_as_last_checkpoint(record: RunRecord) -> None:
    data = json.loads(record.to_json())
    for key in ("checkpoints", "selected"):
        del data[key]
    data["schema_version"] = 1
    old = RunRecord.from_dict(data)
    assert old.selected == "last" and old.checkpoints["last"]["accuracy"] == record.accuracy
    assert old.schema_version == 2
