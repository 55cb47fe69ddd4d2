"""The noise columns of a board: intervals over seeds, the test set's binomial error,
paired tests against the top row with Holm's correction, and the training cost."""
from __future__ import annotations

import dataclasses
import io
import math

import pandas as pd
import pytest
from conftest import REPO
from scipy import stats

from robench.results.leaderboard import (
    experiment_table,
    render_csv,
    render_html,
    render_latex,
    render_markdown,
    run_table,
)
from robench.results.leaderboard.significance import (
    binomial_se,
    crossed_machines,
    holm,
    noninferiority,
    paired_t_pvalue,
    t_interval,
)
from robench.results.records import RunRecord, load_records

COMMITTED = REPO / "leaderboards" / "records" / "digits" / "linf-3_16"


def test_t_interval_is_scipys() -> None:
    values = [64.2, 66.9, 68.1, 70.3, 65.5]
    mean, sem = sum(values) / 5, stats.sem(values)
    low, high = stats.t.interval(0.95, 4, loc=mean, scale=sem)
    assert t_interval(values) == pytest.approx((low, high))
    assert t_interval([70.0]) is None


def test_binomial_error_of_a_test_set() -> None:
    """360 test digits at 68% carry about 2.4 points of sampling error; 10,000 images 0.47."""
    assert binomial_se(68.0, 360) == pytest.approx(100 * math.sqrt(0.68 * 0.32 / 360))
    assert round(binomial_se(68.0, 360), 2) == 2.46 and round(binomial_se(68.0, 10_000), 2) == 0.47
    assert binomial_se(100.0, 360) == 0.0


def test_paired_test_uses_only_the_shared_seeds() -> None:
    top = {0: 70.0, 1: 71.5, 2: 69.0, 3: 72.0, 9: 10.0}
    other = {0: 66.0, 1: 68.0, 2: 67.5, 3: 66.5, 5: 99.0}
    expected = stats.ttest_rel([70.0, 71.5, 69.0, 72.0], [66.0, 68.0, 67.5, 66.5]).pvalue
    assert paired_t_pvalue(top, other) == pytest.approx(expected)
    assert paired_t_pvalue(top, {0: 1.0, 5: 2.0}) is None  # one shared seed: no test
    assert paired_t_pvalue({0: 5.0, 1: 6.0}, {0: 5.0, 1: 6.0}) == 1.0  # identical rows: tied


def test_paired_differences_without_spread_cannot_be_tested() -> None:
    """Differences that are all equal leave the t statistic nothing to divide by: no p,
    not p = 0, also where rounding leaves a last-bit spread (the same 10 of 360 test
    points apart on every seed)."""
    assert math.isnan(paired_t_pvalue({0: 5.0, 1: 6.0}, {0: 4.0, 1: 5.0}))
    top = {seed: 100 * k / 360 for seed, k in enumerate([250, 260, 245])}
    other = {seed: 100 * (k - 10) / 360 for seed, k in enumerate([250, 260, 245])}
    assert len({top[s] - other[s] for s in top}) > 1  # not bit-equal
    assert math.isnan(paired_t_pvalue(top, other))
    assert paired_t_pvalue(top, dict(top)) == 1.0
    assert 0 < paired_t_pvalue({0: 5.0, 1: 6.0, 2: 7.0}, {0: 4.0, 1: 5.0, 2: 5.9}) < 0.05  # spread: a test


def test_noninferiority_is_scipys_one_sided_test_against_the_margin() -> None:
    base = {0: 70.0, 1: 71.5, 2: 69.0, 3: 72.0, 4: 70.5, 9: 1.0}
    variant = {0: 69.8, 1: 71.0, 2: 69.5, 3: 71.2, 4: 70.0}
    diffs = [variant[s] - base[s] for s in range(5)]
    result = noninferiority(base, variant, margin=1.0)
    expected = stats.ttest_1samp(diffs, -1.0, alternative="greater")
    assert result.seeds == (0, 1, 2, 3, 4) and result.mean == pytest.approx(sum(diffs) / 5)
    assert result.p == pytest.approx(expected.pvalue)
    low = stats.ttest_1samp(diffs, 0.0, alternative="greater").confidence_interval(0.95).low
    assert result.lower == pytest.approx(low) and result.noninferior == (result.p < 0.05) is True
    # the same mean loss with more spread is not enough: the bound must clear the margin
    noisy = {s: base[s] + d for s, d in zip(range(5), [-3.0, 2.5, -2.6, 2.4, -0.8])}
    worse = noninferiority(base, noisy, margin=1.0)
    assert worse.mean == pytest.approx(result.mean) and not worse.noninferior and worse.p > 0.05
    assert noninferiority(base, {0: 1.0}, 1.0) is None
    flat = noninferiority({0: 5.0, 1: 6.0}, {0: 4.5, 1: 5.5}, 1.0)
    assert flat.noninferior and math.isnan(flat.p)  # no spread: the mean decides, and there is no p (not p = 0)
    assert not noninferiority({0: 5.0, 1: 6.0}, {0: 3.0, 1: 4.0}, 1.0).noninferior
    # 10 of 360 test points apart on each seed: the differences are equal up to rounding
    points = noninferiority({0: 100 * 300 / 360, 1: 100 * 320 / 360}, {0: 100 * 290 / 360, 1: 100 * 310 / 360}, 1.0)
    assert math.isnan(points.p) and not points.noninferior


def test_holm_steps_down_and_stays_monotone() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def _variants(more: dict[str, list[float]] | None = None) -> list[RunRecord]:
    """Three experiments over five seeds, made from one real committed record: a clear
    top row, one within the seed noise of it, one far below it; and ``more``: name ->
    AutoAttack offsets by seed."""
    records, skipped = load_records(COMMITTED)
    assert records and not skipped
    template = next(r for r in records if "AutoAttack" in r.accuracy)
    offsets = {"top": [0.0, 1.0, -1.0, 0.5, -0.5], "close": [-0.5, 1.5, -2.5, 0.5, 0.0], "far": [-9.0, -8.0, -10.0, -9.5, -8.5],
               **(more or {})}
    made = []
    for name, deltas in offsets.items():
        for seed, delta in enumerate(deltas):
            accuracy = {k: (v + delta if k in ("AutoAttack", "worst case") else v) for k, v in template.accuracy.items()}
            checkpoints = {k: {**v, "accuracy": accuracy} for k, v in template.checkpoints.items()}
            made.append(dataclasses.replace(
                template, run_id=f"{name}-{seed}", seed=seed, accuracy=accuracy, checkpoints=checkpoints,
                defense={"name": name, "params": {}, "changed": {}}, config_hash=name,
                cost={"forward_passes_per_image": 23.0, "flops_per_image": 1.2e8},
            ))
    return made


def test_board_marks_ties_with_the_top_row_and_shows_the_noise() -> None:
    records = _variants()
    df = experiment_table(records).set_index("defense")
    assert list(df.index) == ["top", "close", "far"]
    assert bool(df.loc["close", "tied"]) and not bool(df.loc["far", "tied"])
    raw = [paired_t_pvalue(*({r.seed: r.accuracy["AutoAttack"] for r in records if r.defense["name"] == n}
                             for n in ("top", other))) for other in ("close", "far")]
    assert [df.loc["close", "vs top p"], df.loc["far", "vs top p"]] == pytest.approx(holm(raw))
    aa = [r.accuracy["AutoAttack"] for r in records if r.defense["name"] == "far"]
    assert (df.loc["far", "ci low"], df.loc["far", "ci high"]) == pytest.approx(t_interval(aa))
    n_test = records[0].eval["n"]
    assert df.loc["far", "test se"] == pytest.approx(binomial_se(sum(aa) / 5, n_test))
    assert df.loc["far", "train flops"] == pytest.approx(1.2e8 * records[0].train["epochs"])
    text = render_markdown(records, "t", "src")
    top_line, close_line, far_line = (next(line for line in text.splitlines() if f"| {n} " in line)
                                      for n in ("top", "close", "far"))
    assert "| top " in top_line and "tied (p=" in close_line and "below (p=" in far_line
    assert "AutoAttack 95% CI" in text and "Holm-corrected" in text
    assert f"{1.2e8 * records[0].train['epochs'] / 1e9:.2f} G" in far_line


def test_a_row_without_spread_against_the_top_cannot_be_tested() -> None:
    """A row exactly 3 points below the top row on every seed: its paired differences
    have no spread, so no t-test; every format says so instead of ``below (p=0)``, and
    Holm's correction runs over the two rows that were tested."""
    records = _variants({"even": [-3.0, -2.0, -4.0, -2.5, -3.5]})
    df = experiment_table(records).set_index("defense")
    assert list(df.index) == ["top", "close", "even", "far"]
    assert math.isnan(df.loc["even", "vs top p"]) and not bool(df.loc["even", "tied"])
    assert list(df["vs top untested"]) == ["", "", "no spread", ""]
    raw = [paired_t_pvalue(*({r.seed: r.accuracy["AutoAttack"] for r in records if r.defense["name"] == n}
                             for n in ("top", other))) for other in ("close", "far")]
    assert [df.loc["close", "vs top p"], df.loc["far", "vs top p"]] == pytest.approx(holm(raw))  # a family of 2
    cells = _vs_top(render_markdown(records, "t", "src"))
    assert cells["even"] == "cannot be tested (no spread)" and cells["far"].startswith("below (p=")
    assert "cannot be tested (no spread)</td>" in render_html(records, plots=False)
    assert " & cannot be tested (no spread) & " in render_latex(records, "t")
    measured = pd.read_csv(io.StringIO(render_csv(records))).query("kind == 'measured'").set_index("defense")
    assert math.isnan(measured.loc["even", "vs top p"]) and measured.loc["even", "vs top untested"] == "no spread"
    assert measured["vs top untested"].isna().sum() == 3
    assert "vs top untested" not in render_csv(_variants())  # only where a row could not be tested


def test_rows_are_compared_with_the_top_row_on_the_same_data() -> None:
    """A row trained on other data (here: a training subset) is not tested against the
    board's top row but against the top row on its own data."""
    subset = ("close", "far")
    records = [dataclasses.replace(r, config={**r.config, "data": {**r.config["data"], "train_subset": 1000}})
               if r.defense["name"] in subset else r for r in _variants()]
    df = experiment_table(records).set_index("defense")
    assert list(df.index) == ["top", "close", "far"] and list(df["top"]) == [True, True, False]
    assert list(df["rank"]) == [1, 1, 2] and math.isnan(df.loc["close", "vs top p"])
    raw = paired_t_pvalue(*({r.seed: r.accuracy["AutoAttack"] for r in records if r.defense["name"] == n} for n in subset))
    assert df.loc["far", "vs top p"] == pytest.approx(raw) and not bool(df.loc["far", "tied"])  # one test: no Holm factor
    _, _, table = render_markdown(records, "t", "src").partition("## Data: train_subset=1000")
    close_line, far_line = (next(line for line in table.splitlines() if f"| {n} " in line) for n in subset)
    assert "| top " in close_line and "below (p=" in far_line


def test_rows_without_a_shared_seed_or_a_cost_show_a_dash() -> None:
    records = [r for r in _variants() if r.seed == 0 or r.defense["name"] == "top"]
    records = [dataclasses.replace(r, cost=None) if r.defense["name"] == "far" else r for r in records]
    df = experiment_table(records).set_index("defense")
    assert math.isnan(df.loc["far", "vs top p"]) and math.isnan(df.loc["far", "ci low"])
    far_line = next(line for line in render_markdown(records, "t", "src").splitlines() if "| far " in line)
    assert [cell.strip() for cell in far_line.split("|")].count("–") == 3  # no interval, no test, no cost
    assert not run_table(records).empty and "Train FLOP/img" in render_markdown(records, "t", "s", by_seed=True)


def test_old_records_without_cost_still_read() -> None:
    """Records written before runs counted their cost have no ``cost`` key."""
    records, _ = load_records(COMMITTED)
    old = []
    for rec in records:
        data = dataclasses.asdict(rec)
        del data["cost"]
        old.append(RunRecord.from_dict(data))
    assert all(r.cost is None for r in old)
    table = experiment_table(old)
    assert table["train flops"].isna().all() and table["train s"].notna().all()


def test_crossed_machines_names_only_shared_seeds_whose_known_kinds_differ() -> None:
    top = {0: {"A"}, 1: {"A"}, 2: {"A"}, 3: set(), 4: {"A"}, 9: {"B"}}
    other = {0: {"A"}, 1: {"B"}, 2: set(), 3: {"B"}, 4: {"A", "C"}, 5: {"B"}}
    # 0: same kind; 2 and 3: one side not known; 5 and 9: not shared; 4: one of its runs elsewhere
    assert crossed_machines(top, other) == {1: (("A",), ("B",)), 4: (("A",), ("A", "C"))}
    assert crossed_machines(other, top)[1] == (("B",), ("A",))
    assert crossed_machines({0: {"A", "B"}}, {0: {"A"}}) == {0: (("A", "B"), ("A",))}
    assert crossed_machines({0: set(), 1: set()}, {0: set(), 1: set()}) == {}
    assert crossed_machines({0: set()}, {0: {"A", "B"}}) == {}  # two kinds on one side, the other not known


XEON = {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "simd": ["avx", "avx2", "avx512f", "fma"],
        "threads": 8, "torch": "2.5.1+cpu", "gpu": None}
EPYC = {**XEON, "cpu": "AMD EPYC 7B13 64-Core Processor", "simd": ["avx", "avx2", "fma"]}


def _on(records: list[RunRecord], machines: dict[tuple[str, int], dict | None]) -> list[RunRecord]:
    """``records`` with a machine section: ``machines`` by (defense, seed), else the Xeon."""
    return [dataclasses.replace(r, machine=machines.get((r.defense["name"], r.seed), XEON)) for r in records]


def _vs_top(text: str) -> dict[str, str]:
    """Defense -> its vs top cell, from a markdown board."""
    lines = text.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("|   Rank")).split("|")]
    rows = [[c.strip() for c in line.split("|")] for line in lines if line.startswith("|") and "---" not in line]
    return {row[header.index("Defense")]: row[header.index("vs top")] for row in rows[1:]}


def test_a_test_that_pairs_seeds_across_machine_kinds_is_marked_and_explained() -> None:
    records = _on(_variants(), {("far", 2): EPYC})
    df = experiment_table(records).set_index("defense")
    far = df.loc["far", "vs top machines"]
    assert df.loc["top", "vs top machines"] == "" and df.loc["close", "vs top machines"] == ""
    assert far.startswith("seed 2: top row on Intel(R) Xeon(R)") and ", this row on AMD EPYC 7B13" in far and ";" not in far
    text = render_markdown(records, "t", "src")
    cells = _vs_top(text)
    assert cells["far"].startswith("below (p=") and cells["far"].endswith(")†")
    assert cells["close"].startswith("tied (p=") and cells["close"].endswith(")")  # same kinds: no mark
    note = text.split("**† Paired across machine kinds**: ", 1)[1]
    assert "ran on different machine kinds" in note and f"\n- far (smallcnn, config far): {far}" in note
    assert "- close" not in note and "- top" not in note
    page = render_html(records, plots=False)
    assert "below (p=" in page and ")†</td>" in page and "<strong>† Paired across machine kinds</strong>" in page
    assert "<li>far (smallcnn, config far): seed 2: top row on Intel(R) Xeon(R)" in page
    latex = render_latex(records, "t")
    assert r")\textdagger{}" in latex and r"\textdagger{}: some seeds these rows share" in latex
    measured = pd.read_csv(io.StringIO(render_csv(records))).query("kind == 'measured'").set_index("defense")
    assert measured.loc["far", "vs top machines"] == far and measured["vs top machines"].isna().sum() == 2


def test_no_mark_for_the_same_kind_nor_where_a_kind_is_not_known() -> None:
    """Runs on one machine kind, or runs of which one side does not name its machine
    (records from before robench recorded it), give the board of records without any."""
    plain = _variants()
    expected = render_markdown(plain, "t", "src"), render_csv(plain), render_latex(plain, "t")
    boards = {
        "one kind": _on(plain, {}),
        "one side unknown": _on(plain, {("far", 2): None, ("top", 0): None}),
        "all on another kind": _on(plain, {(n, s): EPYC for n in ("top", "close", "far") for s in range(5)}),
        "kinds differ only at a seed with no test": _on([r for r in plain if r.seed == 0 or r.defense["name"] == "top"],
                                                         {("far", 0): EPYC}),
    }
    for why, records in boards.items():
        df = experiment_table(records)
        assert not df["vs top machines"].any(), why
        if len(records) == len(plain):
            assert (render_markdown(records, "t", "src"), render_csv(records), render_latex(records, "t")) == expected, why
        assert "†" not in render_markdown(records, "t", "src") + render_html(records, plots=False), why


def test_only_the_runs_paired_with_the_top_row_of_the_same_data_count() -> None:
    """Rows of another data setting have another top row: a kind differing from the
    board's first row does not mark them, one differing from their own top row does."""
    subset = {"close", "far"}
    records = [dataclasses.replace(r, config={**r.config, "data": {**r.config["data"], "train_subset": 1000}})
               if r.defense["name"] in subset else r for r in _variants()]
    moved = _on(records, {("close", s): EPYC for s in range(5)})  # close is its setting's top row
    df = experiment_table(moved).set_index("defense")
    assert df.loc["far", "vs top machines"].count("seed ") == 5 and not df.loc["top", "vs top machines"]
    text = render_markdown(moved, "t", "src")
    _, _, small = text.partition("## Data: train_subset=1000")
    assert _vs_top(small)["far"].endswith("†") and "- far (smallcnn, config far): seed 0: top row on AMD" in small
    alone = _on(records, {("top", s): EPYC for s in range(5)})  # nothing pairs with the defaults' top row
    assert "†" not in render_markdown(alone, "t", "src")
