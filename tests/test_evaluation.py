"""``robench eval --checkpoint``: real checkpoints from a real run, through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evalrun")
    proc = run_cli(
        "run", "--results-dir", str(root / "results"), "--runs-dir", str(root / "runs"), "-q",
        "--epochs", "2", "--set", "defense.steps=2", "--attack", "pgd-5", "--n-eval", "60",
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next((root / "results" / "records").rglob("*.json")).read_text())
    checkpoint = root / "runs" / record["run_id"] / "last.pt"
    assert checkpoint.is_file() and f"checkpoints: {checkpoint.parent} (best.pt, last.pt" in proc.stdout
    return {"root": root, "record": record, "checkpoint": checkpoint}


def test_eval_reproduces_the_run_and_writes_a_report(trained_run: dict) -> None:
    ckpt, record = trained_run["checkpoint"], trained_run["record"]
    proc = run_cli(
        "eval", "--checkpoint", str(ckpt), "--runs-dir", str(trained_run["root"] / "runs"), "-q",
        "--attack", "fgsm", "--attack", "pgd-5", "--attack", "apgd-ce", "--n-eval", "60", "--eps-sweep",
    )
    assert proc.returncode == 0, proc.stderr
    reports = list((ckpt.parent / "evals").glob("*.json"))
    assert len(reports) == 1 and f"report: {reports[0]}" in proc.stdout
    report = json.loads(reports[0].read_text())
    assert report["source_run_id"] == record["run_id"] and report["defense"] == "pgd-at"
    assert list(report["accuracy"]) == ["clean", "FGSM", "PGD-5", "APGD-CE", "worst case"]
    # the same weights came back
    assert report["accuracy"]["clean"] == record["checkpoints"]["last"]["accuracy"]["clean"]
    assert report["accuracy"]["worst case"] <= report["accuracy"]["PGD-5"] <= report["accuracy"]["FGSM"]
    assert [a["name"] for a in report["eval"]["attacks"]] == ["fgsm", "pgd-5", "apgd-ce"]
    sweep = report["eval"]["eps_sweep"]
    assert sweep["points"][0] == {"eps": "0", "eps_value": 0.0, "accuracy": report["accuracy"]["clean"]}
    assert [p["eps"] for p in sweep["points"]][-1] == "3/8"  # exact fractions of 3/16
    assert {c["name"] for c in report["eval"]["checks"]} == {
        "eps0-equals-clean", "monotone-in-eps", "large-eps-breaks"}
    assert "eps sweep" in proc.stdout
    assert list((trained_run["root"] / "runs" / "eval-state").glob("*")) == []  # state removed when done


def test_eval_defaults_to_the_standard_suite_at_the_runs_threat(trained_run: dict) -> None:
    from robench.evaluation import plan_eval

    plan = plan_eval(trained_run["checkpoint"])
    assert [e.attack.label() for e in plan.run.suite] == ["FGSM", "PGD-20", "CW-20", "AutoAttack"]
    assert str(plan.run.threat) == "Linf eps=3/16" and plan.run.config.eval.n_eval is None
    assert plan.run.config.seed == trained_run["record"]["seed"]
    eps = plan_eval(trained_run["checkpoint"], flags={"threat": {"eps": "1/8"}})
    assert eps.run.threat.eps == "1/8"


def test_eval_bad_attack_is_one_line(trained_run: dict) -> None:
    proc = run_cli("eval", "--checkpoint", str(trained_run["checkpoint"]), "--attack", "nope", "-q")
    assert proc.returncode == 2 and "unknown attack 'nope'" in proc.stderr


def test_eval_refuses_to_overwrite_a_report(trained_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("{}")
    proc = run_cli("eval", "--checkpoint", str(trained_run["checkpoint"]), "--out", str(out), "-q")
    assert proc.returncode == 2 and "not overwriting" in proc.stderr
    assert out.read_text() == "{}"


class _Payload:
    """Unpickling this would create a file: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_checkpoints_that_carry_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "robench-checkpoint", "x": _Payload(marker)}, evil)  # torch.save pickles it
    proc = run_cli("eval", "--checkpoint", str(evil), "-q")
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not marker.exists()
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["missing", "plain-state-dict", "garbage"])
def test_bad_checkpoints_are_one_line_exit_2(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    if kind == "plain-state-dict":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint")
    proc = run_cli("eval", "--checkpoint", str(path), "-q")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {"missing": "not found", "plain-state-dict": "not a robench checkpoint",
            "garbage": "cannot read"}[kind] in proc.stderr
