"""``robench ablate``: variants of a defense as ordinary runs, and the ablation table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from robench.api.errors import ConfigError
from robench.workflows.ablate import check_switches, variants


def test_variants_are_full_each_off_and_all_off() -> None:
    got = [(v.label, v.off) for v in variants(["sampling", "refine", "align"])]
    assert got == [("full", ()), ("without sampling", ("sampling",)), ("without refine", ("refine",)),
                   ("without align", ("align",)), ("all off", ("sampling", "refine", "align"))]
    assert [v.label for v in variants(["align"])] == ["full", "without align"]
    varied = variants(["align"], ["uncertainty=shift"])
    assert [(v.label, v.off, v.changes) for v in varied][2:] == [("uncertainty=shift", (), ("uncertainty=shift",))]


@pytest.mark.parametrize("switches, message", [
    (["nope"], "not a component switch"),
    (["beta"], "not a component switch"),
    (["align", "align"], "named twice"),
    ([], "at least one"),
])
def test_bad_switches_are_config_errors(switches, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_switches("uadat", switches)


@pytest.mark.parametrize("varied, message", [
    (["uncertainty"], "--vary expects PARAM=VALUE"),
    (["defense.uncertainty=shift"], "--vary expects PARAM=VALUE"),
    (["uncertainty=shift", "uncertainty=shift"], "varied twice"),
])
def test_bad_varied_settings_are_config_errors(varied, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_switches("uadat", [], varied)
    check_switches("uadat", [], ["uncertainty=shift"])  # a variation alone is an ablation too


def test_ablate_runs_variants_labels_them_and_resumes(tmp_path: Path) -> None:
    args = ["ablate", "--defense", "uadat", "--off", "align", "--vary", "uncertainty=shift", "--seeds", "0", "--epochs", "1",
            "--attack", "pgd-2", "--n-eval", "50", "--set", "eval.checks=false",
            "--results-dir", str(tmp_path), "-q"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "3 run(s) to do, 0 already recorded" in proc.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "records").rglob("*.json")]
    assert sorted(json.dumps(r["defense"]["changed"]) for r in records) == [
        '{"align": false}', '{"uncertainty": "shift"}', "{}"]
    table = (tmp_path / "digits-linf-3_16.md").read_text()
    assert "| uadat (align=false) " in table and "| uadat (uncertainty=shift) " in table and "| uadat " in table
    assert f"ablation table: {tmp_path / 'digits-linf-3_16.md'}" in proc.stdout
    again = run_cli(*args)
    assert again.returncode == 0 and "0 run(s) to do, 3 already recorded" in again.stdout


def test_ablate_bad_input_is_one_line() -> None:
    proc = run_cli("ablate", "--defense", "uadat", "--off", "beta")
    assert proc.returncode == 2 and "not a component switch" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("ablate", "--defense", "uadat", "--off", "align", "--seeds", "0,x")
    assert proc.returncode == 2 and "--seeds" in proc.stderr
