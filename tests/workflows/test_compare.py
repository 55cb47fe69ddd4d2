"""``robench compare``: two rows of a committed board, paired by seed, against a margin."""
from __future__ import annotations

from conftest import REPO, run_cli

from robench.results.leaderboard import Filters
from robench.results.leaderboard.significance import noninferiority
from robench.results.records import load_records
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


def test_a_row_that_is_not_on_the_board_is_one_line_with_the_rows() -> None:
    proc = run_cli("compare", "pgd-at (step_size=1)", VARIANT, "--results-dir", str(BOARD))
    assert proc.returncode == 2, proc.stderr
    assert "no row 'pgd-at (step_size=1)' among the selected runs; rows: " in proc.stderr
    assert f"{VARIANT}, {BASE}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    bad = run_cli("compare", BASE, VARIANT, "--results-dir", str(BOARD), "--metric", "nope")
    assert bad.returncode == 2 and "has no 'nope' accuracy" in bad.stderr, bad.stderr
