"""Markdown leaderboards from real run records."""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest

from robench.config import resolve, validate
from robench.leaderboard import UNRELIABLE, leaderboard_frame, refresh_leaderboard, render_markdown
from robench.records import RunRecord, load_records
from robench.run import execute, plan_run


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("board")
    base = ["train.epochs=1", "attacks=[pgd-2]", "eval.n_eval=90", f"results_dir={root}"]
    for extra in (["seed=0", "defense.steps=1"], ["seed=1", "defense.steps=1"], ["seed=0", "defense.name=standard"]):
        execute(plan_run(validate(resolve(None, None, [*base, *extra]))))
    return root


#: the fixture trains pgd-at with steps=1, away from its default of 10
LABEL = {"pgd-at": "pgd-at (steps=1)", "standard": "standard"}


def _records(results: Path) -> list[RunRecord]:
    records, skipped = load_records(results / "records")
    assert not skipped
    return records


def test_seeds_are_grouped_with_mean_and_std(results: Path) -> None:
    records = _records(results)
    df = leaderboard_frame(records)
    # hyperparameters set away from the defaults are named in the Defense column
    assert len(df) == 2 and set(df["Defense"]) == {LABEL["pgd-at"], "standard"}
    row = df[df["Defense"] == LABEL["pgd-at"]].iloc[0]
    assert row["Seeds"] == 2
    clean = [r.accuracy["clean"] for r in records if r.defense["name"] == "pgd-at"]
    assert row["Clean (%)"] == f"{statistics.mean(clean):.2f} ± {statistics.stdev(clean):.2f}"


def test_ranked_by_worst_case_accuracy(results: Path) -> None:
    records = _records(results)
    df = leaderboard_frame(records)
    robust = {
        name: statistics.mean(r.accuracy["PGD-2"] for r in records if r.defense["name"] == name)
        for name in ("pgd-at", "standard")
    }
    expected = sorted(robust, key=lambda n: -robust[n])
    assert list(df["Defense"]) == [LABEL[n] for n in expected] and list(df["Rank"]) == [1, 2]


def test_markdown_regenerates_byte_for_byte(results: Path) -> None:
    path = results / "digits-linf-3_16.md"
    first = path.read_bytes()
    path.unlink()
    again, skipped = refresh_leaderboard(results, "digits", "linf-3_16", "Linf eps=3/16")
    assert again == path and path.read_bytes() == first and not skipped
    text = first.decode()
    assert text.startswith("# digits, Linf eps=3/16") and "Rank |" in text and "do not edit" in text


def test_flagged_evaluations_are_marked_potentially_unreliable(results: Path) -> None:
    records = _records(results)
    assert all(r.eval["flags"] == [] and r.eval["reliable"] for r in records)
    flag = "APGD-T: there are 3 points with zero gradient! This might lead to unreliable evaluation"
    flagged = [dataclasses.replace(r, eval={**r.eval, "flags": [flag], "reliable": False})
               if r.defense["name"] == "standard" else r for r in records]
    df = leaderboard_frame(flagged)
    evaluation = dict(zip(df["Defense"], df["Evaluation"]))
    assert evaluation == {"standard": UNRELIABLE, LABEL["pgd-at"]: "ok"}
    text = render_markdown(flagged, "t", "src")
    standard = next(r for r in flagged if r.defense["name"] == "standard")
    assert f"`{standard.run_id}` (standard, smallcnn, config {standard.config_hash}): {flag}" in text
    assert list(df.columns)[-5:] == ["Seeds", "Epochs", "Checkpoint", "Evaluation", "Config"]
    assert "Worst case (%)" in df.columns
