"""Leaderboards from real run records: grouping, ranking, every output format, filters,
reported rows, the RobustBench export, and the CLI that serves them."""
from __future__ import annotations

import dataclasses
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_cli

from robench.core.config import resolve, validate
from robench.results.leaderboard import (
    UNRELIABLE,
    Filters,
    experiment_table,
    load_reported,
    refresh_all,
    refresh_leaderboard,
    render_csv,
    render_html,
    render_latex,
    render_markdown,
    run_table,
)
from robench.results.leaderboard.evaluations import with_reports
from robench.results.leaderboard.robustbench import model_info
from robench.results.leaderboard.table import run_machine
from robench.results.records import RunRecord, load_records, machine_kind
from robench.results.reports import EvalReport
from robench.workflows.plans import plan_run
from robench.workflows.run import execute

REFERENCE = """\
dataset: digits
threat: {norm: Linf, eps: 3/16}
rows:
  - {defense: pgd-at, arch: smallcnn, clean: 99.5, autoattack: 12.25, source: "A test citation, p. 3"}
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("board")
    base = ["train.epochs=1", "eval.n_eval=90", f"results_dir={root}"]
    for extra in (["seed=0", "defense.steps=1", "attacks=[pgd-2]"], ["seed=1", "defense.steps=1", "attacks=[pgd-2]"],
                  ["seed=0", "defense.name=standard", "attacks=[pgd-2]"],
                  ["seed=0", "defense.name=standard", "attacks=[fgsm, autoattack]", "eval.eps_sweep=true"]):
        execute(plan_run(validate(resolve(None, None, [*base, *extra]))))
    (root / "reference").mkdir()
    (root / "reference" / "digits-linf-3_16.yaml").write_text(REFERENCE)
    return root


#: the fixture trains pgd-at with steps=1, away from its default of 10
PGD = "pgd-at (steps=1)"


def _records(results: Path) -> list[RunRecord]:
    records, skipped = load_records(results / "records")
    assert not skipped and len(records) == 4
    return records


def _by(records: list[RunRecord], defense: str, autoattack: bool = False) -> list[RunRecord]:
    return [r for r in records if r.defense["name"] == defense and ("AutoAttack" in r.accuracy) == autoattack]


def test_seeds_are_grouped_with_mean_and_std(results: Path) -> None:
    records = _records(results)
    df = experiment_table(records)
    assert len(df) == 3 and sorted(df["defense"]) == [PGD, "standard", "standard"]
    row = df[df["defense"] == PGD].iloc[0]
    clean = [r.accuracy["clean"] for r in _by(records, "pgd-at")]
    assert row["seeds"] == 2 and row["clean"] == pytest.approx(statistics.mean(clean))
    assert row["clean std"] == pytest.approx(statistics.stdev(clean))
    text = render_markdown(records, "t", "src")
    assert f"{statistics.mean(clean):.2f} ± {statistics.stdev(clean):.2f}" in text


def test_ranked_by_autoattack_and_rows_without_it_are_marked(results: Path) -> None:
    records = _records(results)
    df = experiment_table(records)
    aa = _by(records, "standard", autoattack=True)[0]
    row = df[df["config"] == aa.config_hash].iloc[0]
    assert row["ranked_by"] == "AutoAttack" and row["AutoAttack"] == pytest.approx(aa.accuracy["AutoAttack"])
    others = df[df["config"] != aa.config_hash]
    assert set(others["ranked_by"]) == {"worst case (PGD-2; no AutoAttack)"}
    keys = [row["AutoAttack"] if row["ranked_by"] == "AutoAttack" else row["worst case"] for _, row in df.iterrows()]
    assert keys == sorted(keys, reverse=True) and list(df["rank"]) == [1, 2, 3]
    assert "| Ranked by" in render_markdown(records, "t", "src")
    only_aa = render_markdown([aa], "t", "src")
    assert "Ranked by" not in only_aa and "AutoAttack (%)" in only_aa and "ranked by AutoAttack accuracy;" in only_aa


def test_by_seed_lists_every_run(results: Path) -> None:
    records = _records(results)
    df = run_table(records)
    assert sorted(df["run_id"]) == sorted(r.run_id for r in records)
    text = render_markdown(records, "t", "src", by_seed=True)
    header = [c.strip() for c in text.split("\n")[4].split("|")]
    assert all(f"`{r.run_id}`" in text for r in records) and "Seed" in header and "Run" in header


def test_filters_select_runs_and_reported_rows(results: Path) -> None:
    records = _records(results)
    assert {r.defense["name"] for r in Filters(defense=["standard"]).apply(records)} == {"standard"}
    assert len(Filters(defense=[PGD]).apply(records)) == 2
    assert len(Filters(threat=["linf-3_16"]).apply(records)) == 4 == len(Filters(threat=["Linf 3/16"]).apply(records))
    assert Filters(threat=["Linf 8/255"]).apply(records) == [] and Filters(arch=["wrn-34-10"]).apply(records) == []
    rows, _ = load_reported(results)
    assert Filters(data=["digits"]).keep_reported(rows[0]) and not Filters(data=["cifar10"]).keep_reported(rows[0])


def test_csv_holds_the_measured_numbers_and_marks_reported_rows(results: Path) -> None:
    records = _records(results)
    rows, _ = load_reported(results)
    df = pd.read_csv(io.StringIO(render_csv(records, rows)))
    measured = df[df["kind"] == "measured"]
    pgd = measured[measured["defense"] == PGD].iloc[0]
    assert pgd["PGD-2 mean"] == pytest.approx(statistics.mean(r.accuracy["PGD-2"] for r in _by(records, "pgd-at")), abs=1e-4)
    reported = df[df["kind"] == "reported"].iloc[0]
    assert reported["AutoAttack mean"] == 12.25 and reported["source"] == "A test citation, p. 3"
    per_run = pd.read_csv(io.StringIO(render_csv(records, by_seed=True)))
    assert sorted(per_run["run_id"]) == sorted(r.run_id for r in records)


def test_latex_and_html_hold_the_numbers(results: Path) -> None:
    records = _records(results)
    rows, _ = load_reported(results)
    aa = _by(records, "standard", autoattack=True)[0]
    number = f"{aa.accuracy['AutoAttack']:.2f}"
    latex = render_latex(records, "digits, Linf eps=3/16", rows)
    assert latex.count(r"\begin{tabular}") == 2 and r"\toprule" in latex and r"Clean (\%)" in latex
    assert number in latex and r"$\pm$" in latex and "12.25" in latex and "A test citation" in latex
    page = render_html(records, rows, title="robench <boards>", plots=False)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "robench &lt;boards&gt;" in page and number in page and f'data-v="{float(number)!r}"' in page
    assert page.index("12.25") > page.index("Reported (published numbers") and "<img" not in page


def test_reported_rows_stay_apart_from_measured_ones(results: Path) -> None:
    records = _records(results)
    rows, _ = load_reported(results)
    text = render_markdown(records, "t", "src", rows)
    measured, reported = text.split("## Reported (published numbers, not measured by robench)")
    assert "12.25" not in measured and "12.25" in reported and "A test citation, p. 3" in reported


def test_malformed_reference_file_is_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "ok.yaml").write_text(REFERENCE)
    (tmp_path / "reference" / "bad.yaml").write_text(REFERENCE.replace("12.25", "112.5"))
    (tmp_path / "reference" / "nosource.yaml").write_text(REFERENCE.replace(', source: "A test citation, p. 3"', ""))
    rows, skipped = load_reported(tmp_path)
    assert len(rows) == 1
    reasons = {s.path.name: s.reason for s in skipped}
    assert "[0, 100]" in reasons["bad.yaml"] and "source" in reasons["nosource.yaml"]


def test_board_regenerates_byte_for_byte_with_its_reported_rows(results: Path) -> None:
    path, _ = refresh_leaderboard(results, "digits", "linf-3_16", "Linf eps=3/16")
    first = path.read_bytes()
    path.unlink()
    paths, skipped = refresh_all(results)
    assert paths == [path] and path.read_bytes() == first and not skipped
    text = first.decode()
    assert text.startswith("# digits, Linf eps=3/16") and "do not edit" in text and "12.25" in text


def test_flagged_evaluations_are_marked_potentially_unreliable(results: Path) -> None:
    records = _records(results)
    assert all(r.eval["flags"] == [] and r.eval["reliable"] for r in records)
    flag = "APGD-T: there are 3 points with zero gradient! This might lead to unreliable evaluation"
    flagged = [dataclasses.replace(r, eval={**r.eval, "flags": [flag], "reliable": False})
               if r.defense["name"] == "pgd-at" else r for r in records]
    df = experiment_table(flagged)
    assert dict(zip(df["defense"], df["flags"]))[PGD] == 2
    text = render_markdown(flagged, "t", "src")
    bad = _by(flagged, "pgd-at")[0]
    assert f"`{bad.run_id}` (pgd-at, smallcnn, config {bad.config_hash}): {flag}" in text
    assert UNRELIABLE in text


def test_each_data_setting_has_a_table_of_its_own(results: Path) -> None:
    """Rows that trained on other data (a training subset here) are no like-for-like
    comparison: in every format they get their own table, ranking and top row, under a
    sub-heading that names the setting, and no Data column."""
    records = _records(results)
    one = render_markdown(records, "t", "src")
    assert "## Data" not in one and "| Data" not in one and one.count("| top ") == 1  # one setting: one table
    subset = [dataclasses.replace(r, config={**r.config, "data": {**r.config["data"], "train_subset": 500}})
              if r.defense["name"] == "pgd-at" else r for r in records]
    df = experiment_table(subset)
    assert list(zip(df["data"], df["rank"], df["top"])) == [("", 1, True), ("", 2, False), ("train_subset=500", 1, True)]
    assert list(run_table(subset)["rank"]) == [1, 2, 1, 2]
    text = render_markdown(subset, "t", "src")
    defaults, _, small = text.partition("\n## Data: train_subset=500\n")
    assert "\n## Data: dataset defaults (train_subset unset)\n" in defaults and "| Data" not in text
    assert "trained on 2 data settings, which differ in train_subset" in defaults
    assert defaults.count("| top ") == 1 and "| standard " in defaults and PGD not in defaults
    assert small.count("| top ") == 1 and f"|      1 | {PGD} " in small and "standard" not in small
    measured = pd.read_csv(io.StringIO(render_csv(subset))).query("kind == 'measured'")
    assert list(zip(measured["data"].fillna(""), measured["rank"])) == [("", 1), ("", 2), ("train_subset=500", 1)]
    latex = render_latex(subset, "t")
    assert latex.count(r"\begin{tabular}") == 2 and r"\caption{t, Data: train\_subset=500. Measured" in latex
    page = render_html(subset, plots=False)
    assert page.count("<h3>Data: ") == 2 and "<th scope=col>Data</th>" not in page
    assert page.index("<h3>Data: dataset defaults (train_subset unset)</h3>") < page.index(
        "<h3>Data: train_subset=500</h3>") < page.index("pgd-at (steps=<wbr>1)")


def test_robustbench_entry_uses_its_field_names_and_refuses_runs_without_autoattack(results: Path) -> None:
    records = _records(results)
    aa = _by(records, "standard", autoattack=True)[0]
    info = model_info(aa, name="Test entry", link="https://example.org")
    assert list(info)[:12] == ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
                               "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc"]
    assert info["eps"] == "3/16" and info["clean_acc"] == f"{aa.accuracy['clean']:.2f}"
    assert info["autoattack_acc"] == f"{aa.accuracy['AutoAttack']:.2f}" and aa.run_id in info["footnote"]
    out = run_cli("leaderboard", "--results-dir", str(results), "--format", "robustbench", "--run", aa.run_id)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["autoattack_acc"] == info["autoattack_acc"]
    plain = _by(records, "standard")[0]
    out = run_cli("leaderboard", "--results-dir", str(results), "--format", "robustbench", "--run", plain.run_id)
    assert out.returncode == 2 and "no AutoAttack" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().endswith(  # the command that makes it exportable, with the real checkpoint
        f"robench eval --checkpoint {plain.run_dir}/{plain.selected}.pt --results-dir {results}")
    assert Path(plain.run_dir, f"{plain.selected}.pt").is_file()


def test_cli_formats_filters_and_reports_malformed_records(results: Path, tmp_path: Path) -> None:
    out = run_cli("leaderboard", "--results-dir", str(results), "--defense", "pgd-at", "--by", "seed", "-f", "csv")
    assert out.returncode == 0, out.stderr
    assert sorted(pd.read_csv(io.StringIO(out.stdout)).query("kind == 'measured'")["seed"]) == [0, 1]
    target = tmp_path / "board.html"
    out = run_cli("leaderboard", "--results-dir", str(results), "-f", "html", "-o", str(target))
    assert out.returncode == 0 and target.read_text().startswith("<!DOCTYPE html>")
    broken = results / "records" / "digits" / "linf-3_16" / "broken.json"
    broken.write_text('{"schema_version": 2, "run_id": "x"}')
    try:
        out = run_cli("leaderboard", "--results-dir", str(results))
    finally:
        broken.unlink()
    assert out.returncode == 0 and "skipped" in out.stderr and "broken.json" in out.stderr and "missing" in out.stderr
    assert out.stdout.count(f"| {PGD}") == 1
    for bad in (["--by", "epoch"], ["-f", "pdf"], ["--arch", "nope"], ["--refresh", "--data", "digits"]):
        out = run_cli("leaderboard", "--results-dir", str(results), *bad)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (bad, out.stderr)


def test_an_empty_results_folder_in_a_clone_points_at_the_committed_boards(tmp_path: Path) -> None:
    """run_cli runs in this checkout, whose leaderboards/ holds the committed boards and
    records: the one error line names the flag that shows them, and the flag works."""
    empty = tmp_path / "robench-results"
    out = run_cli("leaderboard", "--results-dir", str(empty))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.strip().endswith(f"no run records or reported rows exist in {empty}; this checkout's committed "
                                       "boards are in ./leaderboards: robench leaderboard --results-dir leaderboards")
    shown = run_cli("leaderboard", "--results-dir", "leaderboards", "--data", "digits")
    assert shown.returncode == 0 and shown.stdout.startswith("# digits, Linf eps=3/16"), shown.stderr
    elsewhere = subprocess.run([sys.executable, "-m", "robench", "leaderboard", "--results-dir", str(empty)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 2 and elsewhere.stderr.strip().endswith(f"exist in {empty}")  # no checkout here


def test_two_runs_writing_at_the_same_moment_both_land(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    cmd = [sys.executable, "-m", "robench", "run", "--epochs", "1", "--attack", "fgsm", "--n-eval", "30",
           "--results-dir", str(root), "-q", "--set", "defense.steps=1"]
    procs = [subprocess.Popen([*cmd, "--seed", str(s)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for s in (0, 1)]
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
    records, skipped = load_records(root / "records")
    assert len(records) == 2 and not skipped and {r.seed for r in records} == {0, 1}
    board = (root / "digits-linf-3_16.md").read_text()
    assert "from 2 run record(s)" in board


def test_plot_commands_write_pngs_from_the_records(results: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    out = run_cli("plot", "board", "--results-dir", str(results), "-o", str(tmp_path))
    assert out.returncode == 0, out.stderr
    written = sorted(Path(p).name for p in out.stdout.split())
    assert written == ["digits-linf-3_16-clean-vs-robust.png", "digits-linf-3_16-eps-sweep.png"]
    assert all(imread(tmp_path / name).std() > 0 for name in written)
    run = _records(results)[0].run_id
    out = run_cli("plot", "run", run[:-2], "--results-dir", str(results), "-o", str(tmp_path / "curves.png"))
    assert out.returncode == 0 and imread(tmp_path / "curves.png").shape[2] in (3, 4)
    out = run_cli("plot", "run", "nope", "--results-dir", str(results))
    assert out.returncode == 2 and "no run with id 'nope'" in out.stderr


def _report(record: RunRecord, autoattack: float, **changes) -> EvalReport:
    """An evaluation report on ``record``'s reported checkpoint, with AutoAttack."""
    epoch = record.checkpoints[record.selected]["epoch"]
    fields = dict(
        report_id=f"{record.run_id}-{record.selected}-eval-x", created="2026-11-28T00:00:00Z",
        robench_version="0", git_commit=None, checkpoint="best.pt", checkpoint_sha256="0" * 64,
        source_run_id=record.run_id, source_checkpoint=record.selected, source_epoch=epoch,
        dataset=record.dataset, arch=record.arch["name"], defense=record.defense["name"],
        threat=dict(record.threat), seed=0, eval={"n": 90, "flags": []},
        accuracy={"clean": record.accuracy["clean"], "AutoAttack": autoattack, "worst case": autoattack},
        wall_time_s=1.0, device="cpu", config={},
    )
    return EvalReport(**{**fields, **changes})


def test_a_report_completes_only_its_own_runs_reported_weights_and_threat(results: Path) -> None:
    records = _records(results)
    plain = _by(records, "standard")[0]
    own_aa = _by(records, "standard", autoattack=True)[0]
    epoch = plain.checkpoints[plain.selected]["epoch"]
    ignored = [
        _report(plain, 1.0, source_epoch=epoch + 1),  # other weights
        _report(plain, 2.0, threat={"norm": "Linf", "eps": "1/8"}),  # another threat model
        _report(plain, 3.0, source_run_id=own_aa.run_id),  # another run
        _report(plain, 4.0, accuracy={"clean": 50.0, "PGD-20": 5.0, "worst case": 5.0}),  # no AutoAttack
    ]
    assert with_reports([plain], ignored) == [plain]
    newest = _report(plain, 6.0, created="2026-11-29T00:00:00Z", report_id="newer")
    shown = with_reports([plain, own_aa], [*ignored, _report(plain, 5.0), newest, _report(own_aa, 0.0)])
    assert shown[0].accuracy["AutoAttack"] == 6.0 and shown[0].eval["report"] == "newer"
    assert shown[1] == own_aa  # a run whose own suite had AutoAttack keeps its own number
    same_eps = _report(plain, 7.0, threat={"norm": "Linf", "eps": "0.1875"})  # 3/16 written otherwise
    assert with_reports([plain], [same_eps])[0].accuracy["AutoAttack"] == 7.0
    table = run_table(shown)
    assert dict(zip(table["run_id"], table["checkpoint"]))[plain.run_id] == f"{plain.selected} (eval report)"
    assert model_info(shown[0])["footnote"].endswith("AutoAttack from evaluation report newer).")


def test_a_run_completed_by_a_report_names_where_it_was_trained_and_evaluated() -> None:
    """AutoAttack gives other numbers on other hardware too: the machine kind a board
    pairs by is the training's and the report's; unknown where either is not said."""
    records, _ = load_records(REPO / "leaderboards" / "records" / "digits" / "linf-3_16")
    old = records[0]
    xeon = {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "simd": ["avx2", "fma"], "gpu": None}
    epyc = {**xeon, "cpu": "AMD EPYC 7B13 64-Core Processor"}
    plain = dataclasses.replace(old, machine=xeon, accuracy={k: v for k, v in old.accuracy.items() if k != "AutoAttack"})
    trained = machine_kind(plain)
    assert trained is not None and run_machine(plain) == trained and run_machine(old) is None

    def shown(record: RunRecord, machine: dict | None) -> RunRecord:
        report = _report(record, 50.0, machine=machine)
        completed = with_reports([record], [report])[0]
        assert completed.eval["report"] == report.report_id
        return completed

    assert run_machine(shown(plain, xeon)) == trained
    assert run_machine(shown(plain, epyc)) == f"{trained}; evaluated on {machine_kind(_report(plain, 50.0, machine=epyc))}"
    assert run_machine(shown(plain, None)) is None and "report_machine" not in shown(plain, None).eval
    assert run_machine(shown(dataclasses.replace(plain, machine=None), xeon)) is None
