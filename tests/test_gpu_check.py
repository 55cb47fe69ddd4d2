"""benchmarks/gpu/check.py: every part at toy size (--smoke) on this machine, and the
schema of every committed gpu-check.json."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

CHECK = REPO / "benchmarks" / "gpu" / "check.py"


def _report():
    spec = importlib.util.spec_from_file_location("gpu_check_report", REPO / "benchmarks" / "gpu" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _report()


def _check(*args: str, runs: Path) -> subprocess.CompletedProcess[str]:
    env = {**__import__("os").environ, "ROBENCH_RUNS": str(runs), "COLUMNS": "160"}
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=900,
                          cwd=str(REPO), env=env)


def test_committed_gpu_checks_have_the_documented_keys() -> None:
    for path in sorted((REPO / "benchmarks" / "results").glob("**/gpu-check.json")):
        assert report.problems(json.loads(path.read_text())) == [], path


def test_the_schema_check_finds_what_is_wrong() -> None:
    row = dict.fromkeys(report.ROW_KEYS, None) | {"arch": "a", "defense": "d", "precision": "bf16",
                                                   "channels_last": True, "compile": False, "batch_size": 4,
                                                   "images_per_s": 10.0}
    part = {"device": "x", "torch": "2", "date": "d", "commit": "c", "smoke": True, "seconds": 1.0, "rows": [row]}
    good = {"device": "x", "torch": "2", "tf32": {}, "date": "d", "commit": "c", "parts": {"core": part}}
    assert report.problems(good) == []
    renamed = {**row, "throughput": row["images_per_s"]}
    del renamed["images_per_s"]
    bad = {**good, "parts": {"core": {**part, "rows": [renamed]}}}
    assert report.problems(bad) == ["part 'core' row 0: keys differ (extra ['throughput'], missing ['images_per_s'])"]
    no_commit = {k: v for k, v in good.items() if k != "commit"}
    assert report.problems(no_commit) == ["missing top-level key 'commit'"]
    assert report.problems({**good, "parts": {"core": {**part, "rows": [{**row, "batch_size": "4"}]}}})


def test_every_part_runs_at_toy_size_into_one_file(tmp_path: Path) -> None:
    out, runs = tmp_path / "check", tmp_path / "runs"
    hurried = _check("core", "--smoke", "--seconds", "0", "--out", str(out), runs=runs)
    assert hurried.returncode == 0, hurried.stdout[-3000:] + hurried.stderr[-3000:]
    doc = json.loads((out / "gpu-check.json").read_text())
    assert len(doc["parts"]["core"]["rows"]) == 1  # out of time: the first row is kept, no other starts
    assert "the remaining rows were not started" in (out / "core.log").read_text()
    for part in ("fmnist", "autoattack", "core"):  # core again: its entry is replaced, not repeated
        done = _check(part, "--smoke", "--out", str(out), runs=runs)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((out / "gpu-check.json").read_text())
    assert report.problems(doc) == []
    assert sorted(doc["parts"]) == ["autoattack", "core", "fmnist"]
    assert doc["parts"]["autoattack"]["pytest"]["returncode"] == 0
    core = doc["parts"]["core"]
    assert [r["defense"] for r in core["rows"]] == ["pgd-at", "trades", "mart", "uadat"]
    assert all(r["precision"] == "bf16" and r["channels_last"] and not r["compile"] for r in core["rows"])
    assert core["pytest"]["returncode"] == 0 and core["pytest"]["failed"] == 0
    assert core["matmul_bf16_tflops"] > 0 and core["smoke"] is True
    (record,) = doc["parts"]["fmnist"]["records"]
    assert (out / "results" / record["file"]).is_file() and record["accuracy"]["clean"] > 0
    for part in ("core", "fmnist"):
        assert (out / f"{part}.log").read_text().count(f"== {part} done") >= 1
    table = _check("table", "--out", str(out), runs=runs)
    assert table.returncode == 0 and table.stdout.count("| core | smallcnn |") == 4


def test_compile_and_sweep_parts_at_toy_size(tmp_path: Path) -> None:
    out, runs = tmp_path / "check", tmp_path / "runs"
    compiled = _check("compile", "--smoke", "--out", str(out), runs=runs)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    # 2 minutes: the first run must finish inside the budget even on a loaded 2-core machine
    swept = _check("sweep", "--smoke", "--minutes", "2", "--out", str(out), runs=runs)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    doc = json.loads((out / "gpu-check.json").read_text())
    assert report.problems(doc) == []
    rows = doc["parts"]["compile"]["rows"]
    assert len(rows) == 8 and all(r["compile"] for r in rows) and {r["batch_size"] for r in rows} == {4, 8}
    # the budget reaches the sweep (whether it cuts the second run depends on the machine's
    # speed; tests/workflows/test_sweep.py checks what a budget does)
    assert "--budget 2 " in (out / "sweep.log").read_text()
    assert doc["parts"]["sweep"]["returncode"] == 0
    assert doc["parts"]["sweep"]["records"]  # at least the first run finished inside the budget
