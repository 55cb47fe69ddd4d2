"""``robench compare``: two rows of a committed board, paired by seed, against a margin."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import REPO, run_cli

from robench.results.labels import defense_label
from robench.results.leaderboard import Filters
from robench.results.leaderboard.significance import noninferiority
from robench.results.records import load_records, machine_kind, write_record
from robench.workflows.compare import compare

BOARD = REPO / "leaderboards"
BASE, VARIANT = "pgd-at (step_size=0.09375)", "pgd-at (step_size=0.046875, steps=16)"


def _autoattack(label_params: dict) -> dict[int, float]:
    records, _ = load_records(BOARD / "records" / "digits" / "linf-3_16")
    return {r.seed: r.accuracy["AutoAttack"] for r in records
            if r.defense["name"] == "pgd-at" and r.defense.get("changed") == label_params}


def test_compare_pairs_the_two_rows_by_seed_on_the_ranking_accuracy() -> None:
    found = compare(BOARD, BASE, VARIANT, filters=Filters(), margin=1.0)
    base, variant = _autoattack({"step_size": 0.09375}), _autoattack({"step_size": 0.046875, "steps": 16})
    assert found.metric == "AutoAttack" and found.base_by_seed == base and found.variant_by_seed == variant
    assert len(base) == 5 and found.result == noninferiority(base, variant, 1.0)
    assert compare(BOARD, BASE, VARIANT, filters=Filters(), metric="clean", margin=0.5).metric == "clean"


def test_compare_prints_each_seed_and_the_verdict() -> None:
    proc = run_cli("compare", BASE, VARIANT, "--results-dir", str(BOARD), "--margin", "1")
    assert proc.returncode == 0, proc.stderr
    result = compare(BOARD, BASE, VARIANT, filters=Filters(), margin=1.0).result
    assert f"one-sided 95% lower bound {result.lower:+.2f}; margin 1.00" in proc.stdout
    assert ("non-inferior" if result.noninferior else "not shown non-inferior") in proc.stdout
    assert "†" not in proc.stdout and "machine kinds" not in proc.stdout  # the committed records do not say


def test_a_row_that_is_not_on_the_board_is_one_line_with_the_rows() -> None:
    proc = run_cli("compare", "pgd-at (step_size=1)", VARIANT, "--results-dir", str(BOARD))
    assert proc.returncode == 2, proc.stderr
    assert "no row 'pgd-at (step_size=1)' among the selected runs; rows: " in proc.stderr
    assert f"{VARIANT}, {BASE}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    bad = run_cli("compare", BASE, VARIANT, "--results-dir", str(BOARD), "--metric", "nope")
    assert bad.returncode == 2 and "has no 'nope' accuracy" in bad.stderr, bad.stderr


XEON = {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "simd": ["avx", "avx2", "avx512f", "fma"],
        "threads": 8, "torch": "2.5.1+cpu", "gpu": None}
EPYC = {**XEON, "cpu": "AMD EPYC 7B13 64-Core Processor", "simd": ["avx", "avx2", "fma"]}


def _on_machines(root: Path, machines: dict[tuple[str, int], dict | None]) -> Path:
    """The two rows' committed records, written to ``root`` with a machine section: the
    Xeon unless ``machines`` names another by (row label, seed)."""
    records, _ = load_records(BOARD / "records" / "digits" / "linf-3_16")
    for record in records:
        label = defense_label(record)
        if label in (BASE, VARIANT):
            write_record(dataclasses.replace(record, machine=machines.get((label, record.seed), XEON)), root)
    return root


def test_compare_names_the_seeds_that_ran_on_different_machine_kinds(tmp_path: Path) -> None:
    root = _on_machines(tmp_path / "results", {(VARIANT, 3): EPYC, (BASE, 1): None})
    found = compare(root, BASE, VARIANT, filters=Filters(), margin=1.0)
    xeon, epyc = (machine_kind(dataclasses.replace(load_records(root)[0][0], machine=m)) for m in (XEON, EPYC))
    assert found.crossed == {3: ((xeon,), (epyc,))}  # seed 1: the base run does not say
    assert found.result == compare(BOARD, BASE, VARIANT, filters=Filters(), margin=1.0).result
    proc = run_cli("compare", BASE, VARIANT, "--results-dir", str(root), "--margin", "1")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert rows["3"].rstrip().endswith("†") and not any(rows[s].rstrip().endswith("†") for s in "0124")
    assert f"† ran on different machine kinds: seed 3: {BASE} on {xeon}, {VARIANT} on {epyc}. " in proc.stdout


def test_compare_says_nothing_of_machines_when_the_kinds_agree(tmp_path: Path) -> None:
    root = _on_machines(tmp_path / "results", {})
    assert compare(root, BASE, VARIANT, filters=Filters(), margin=1.0).crossed == {}
    proc = run_cli("compare", BASE, VARIANT, "--results-dir", str(root), "--margin", "1")
    assert proc.returncode == 0 and "†" not in proc.stdout and "machine kinds" not in proc.stdout, proc.stderr
