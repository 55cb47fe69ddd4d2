"""PNG figures from the committed run records (robench.results.plots).

The figures' data is checked on the Figure objects the plot functions build, against
numbers computed here from the records; the written files are read back as images.
"""
from __future__ import annotations

import dataclasses
import statistics
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from robench.api.errors import UserError
from robench.evaluation.sequential import WORST_CASE
from robench.results.leaderboard import defense_label
from robench.results.plots import (
    DPI,
    _clean_robust_figure,
    _run_figure,
    _sweep_figure,
    plot_clean_vs_robust,
    plot_eps_sweep,
    plot_run,
    robust_metric,
)
from robench.results.records import RunRecord, load_records

BOARDS = Path(__file__).resolve().parents[2] / "leaderboards"
EPS = ["0", "3/64", "3/32", "9/64", "3/16", "15/64", "9/32", "3/8"]


def _load(folder: Path) -> list[RunRecord]:
    records, skipped = load_records(folder)
    assert records and not skipped
    return records


@pytest.fixture(scope="module")
def digits() -> list[RunRecord]:
    """30 real runs: 5 tuned defenses and PGD-AT with 16 steps x 5 seeds, AutoAttack in
    their suite, with eps sweeps."""
    return _load(BOARDS / "records" / "digits" / "linf-3_16")


@pytest.fixture(scope="module")
def ablation() -> list[RunRecord]:
    """18 real UAD-AT runs whose suite ends at APGD-T (no AutoAttack) and have no eps sweep."""
    return _load(BOARDS / "ablations" / "uadat" / "records")


def _no_sweep(rec: RunRecord) -> RunRecord:
    return dataclasses.replace(rec, eval={**rec.eval, "eps_sweep": None})


#: the committed digits board's experiments, as plots label them (with their tuned settings)
PGD_AT = "pgd-at (step_size=0.09375)"
DIGITS = (PGD_AT, "pgd-at (step_size=0.046875, steps=16)", "standard", "trades", "mart (beta=1.0)",
          "uadat (align_weight=0.05, beta=1.0)")
SEEDS = 5


def _by_defense(records: list[RunRecord], name: str) -> list[RunRecord]:
    """The runs of one experiment, by its label (two PGD-AT experiments differ in their settings)."""
    return sorted((r for r in records if defense_label(r) == name), key=lambda r: r.seed)


def _made_up_sweep(rec: RunRecord, accuracies: list[float]) -> RunRecord:
    """TEST DATA: ``rec`` with an invented eps sweep (the committed records have none)."""
    points = [{"eps": e, "eps_value": float(Fraction(e)), "accuracy": a} for e, a in zip(EPS, accuracies)]
    return dataclasses.replace(rec, eval={**rec.eval, "eps_sweep": {"attack": "PGD-20", "n": 360, "points": points}})


def _assert_png(path: Path, size: tuple[float, float]) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape == (round(size[1] * DPI), round(size[0] * DPI), 4)
    assert float(np.std(image[..., :3])) > 0.05  # not blank
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left beside it


def test_plot_run_writes_a_png_in_a_new_folder(digits: list[RunRecord], tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "run.png"
    assert plot_run(digits[0], path) == path
    _assert_png(path, (11, 4.2))


@pytest.mark.parametrize("defense", [PGD_AT, "standard"])
def test_run_figure_plots_the_history_and_marks_the_best_epoch(digits: list[RunRecord], defense: str) -> None:
    rec = _by_defense(digits, defense)[0]
    acc_ax, loss_ax = _run_figure(rec).axes
    lines = {line.get_label(): line for line in acc_ax.get_lines()}
    epochs = [h["epoch"] for h in rec.history]
    for key, label in (("val_clean", "validation clean"), ("val_pgd", "validation PGD"), ("accuracy", "training")):
        (line,) = [ln for name, ln in lines.items() if name.startswith(label)]
        assert list(line.get_xdata()) == epochs
        assert list(line.get_ydata()) == [h[key] for h in rec.history]
    assert list(loss_ax.get_lines()[0].get_ydata()) == [h["loss"] for h in rec.history]
    # the star sits on the curve the best checkpoint was selected by (clean for standard training)
    best = rec.checkpoints["best"]
    selected_by = {PGD_AT: "val_pgd", "standard": "val_clean"}[defense]
    assert best["selected_by"] == selected_by
    (star,) = [ln for name, ln in lines.items() if name.startswith("best epoch")]
    assert list(star.get_xdata()) == [best["epoch"]]
    assert list(star.get_ydata()) == [rec.history[best["epoch"] - 1][selected_by]] == [best[selected_by]]
    assert acc_ax.get_ylim() == (-2, 102)


def test_run_figure_skips_empty_series_and_has_no_best_without_validation(digits: list[RunRecord]) -> None:
    rec = digits[0]
    history = [{**h, "val_clean": None, "val_pgd": None} for h in rec.history]
    rec = dataclasses.replace(rec, history=history, checkpoints={"last": rec.checkpoints["last"]}, selected="last")
    (acc_ax, _) = _run_figure(rec).axes
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert len(labels) == 1 and labels[0].startswith("training")
    assert list(acc_ax.get_lines()[0].get_ydata()) == [h["accuracy"] for h in rec.history]


def test_eps_sweep_is_the_mean_over_seeds_per_experiment(digits: list[RunRecord], tmp_path: Path) -> None:
    # TEST DATA: made-up sweeps for pgd-at's and standard's three seeds
    made_up = {
        PGD_AT: [[97, 90, 80, 70, 60, 50, 40, 30], [99, 92, 84, 71, 63, 51, 45, 33], [98, 91, 82, 72, 61, 52, 41, 27]],
        "standard": [[97, 60, 20, 5, 1, 0, 0, 0], [96, 64, 24, 7, 0, 0, 0, 0], [98, 62, 22, 3, 2, 0, 0, 0]],
    }
    swept = [_made_up_sweep(rec, acc) for name, runs in made_up.items()
             for rec, acc in zip(_by_defense(digits, name), runs)]
    records = swept + [_no_sweep(r) for r in _by_defense(digits, "trades")]  # runs without a sweep are left out
    ax = _sweep_figure(records, "test", "test data").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {f"{PGD_AT} (3 seeds)", "standard (3 seeds)"}
    for name, runs in made_up.items():
        line = lines[f"{name} (3 seeds)"]
        assert list(line.get_xdata()) == [float(Fraction(e)) for e in EPS]
        assert np.allclose(line.get_ydata(), [statistics.fmean(col) for col in zip(*runs)])
    assert [t.get_text() for t in ax.get_xticklabels()] == EPS
    assert len(ax.collections) == 2  # a std band per experiment
    path = plot_eps_sweep(records, tmp_path / "sweep.png", "test data")
    _assert_png(path, (8, 6))


def test_eps_sweep_of_the_committed_runs_is_their_mean(digits: list[RunRecord]) -> None:
    ax = _sweep_figure(digits, "digits", "records").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    for name in DIGITS:
        runs = _by_defense(digits, name)
        expected = [statistics.fmean(col) for col in zip(*[[p["accuracy"] for p in r.eval["eps_sweep"]["points"]]
                                                           for r in runs])]
        assert np.allclose(lines[f"{name} ({SEEDS} seeds)"].get_ydata(), expected)
    assert any(list(line.get_xdata()) == [0.1875, 0.1875] for line in ax.get_lines())  # the threat's eps


def test_eps_sweep_without_any_sweep_is_a_user_error(ablation: list[RunRecord], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no record in leaderboards/x has an eps sweep; run with --eps-sweep"):
        plot_eps_sweep(ablation, tmp_path / "sweep.png", "digits", source="leaderboards/x")
    assert not (tmp_path / "sweep.png").exists()


def test_clean_vs_robust_point_is_the_mean_of_its_seeds(digits: list[RunRecord], tmp_path: Path) -> None:
    ax = _clean_robust_figure(digits, "digits").axes[0]
    assert ax.get_ylabel() == "robust accuracy (%): AutoAttack"
    containers = {c.get_label(): c for c in ax.containers}
    assert set(containers) == {f"{name} ({SEEDS} seeds)" for name in DIGITS}
    for name in DIGITS:
        runs = _by_defense(digits, name)
        clean = [r.accuracy["clean"] for r in runs]
        robust = [r.accuracy["AutoAttack"] for r in runs]
        container = containers[f"{name} ({SEEDS} seeds)"]
        point = container.lines[0]
        assert np.allclose([point.get_xdata()[0], point.get_ydata()[0]], [statistics.fmean(clean), statistics.fmean(robust)])
        # error bars: sample std (ddof=1) over the seeds
        xbar, ybar = (np.asarray(col.get_segments()[0]) for col in container.lines[2])
        assert np.isclose(xbar[1, 0] - xbar[0, 0], 2 * statistics.stdev(clean))
        assert np.isclose(ybar[1, 1] - ybar[0, 1], 2 * statistics.stdev(robust))
    assert sorted(t.get_text() for t in ax.texts) == sorted(DIGITS)
    lo, hi = ax.get_ylim()
    assert -2 <= lo and hi <= 102
    path = plot_clean_vs_robust(digits, tmp_path / "clean_vs_robust.png", "digits")
    _assert_png(path, (8, 6))


def test_clean_vs_robust_groups_by_config_and_defense_settings() -> None:
    """The sweep's six uadat configs and the ablation's six settings stay apart."""
    sweep = _load(BOARDS / "sweeps" / "uadat-digits" / "records")
    labels = [c.get_label() for c in _clean_robust_figure(sweep, "sweep").axes[0].containers]
    assert sorted(labels) == sorted(f"uadat [{r.config_hash}] (1 seed)" for r in sweep)
    ablation = _load(BOARDS / "ablations" / "uadat" / "records")
    labels = [c.get_label() for c in _clean_robust_figure(ablation, "ablation").axes[0].containers]
    assert sorted(labels) == sorted({f"{defense_label(r)} (3 seeds)" for r in ablation})
    assert len(labels) == 6


def test_robust_metric_is_autoattack_only_when_every_run_has_it(ablation: list[RunRecord]) -> None:
    digits = ablation
    key, label = robust_metric(digits)
    assert key == WORST_CASE and "APGD-T" in label and "no AutoAttack" in label
    # TEST DATA: an invented AutoAttack accuracy, 10 points under each run's worst case
    with_aa = [dataclasses.replace(r, accuracy={**r.accuracy, "AutoAttack": max(0.0, r.accuracy[WORST_CASE] - 10)})
               for r in digits]
    assert robust_metric(with_aa) == ("AutoAttack", "AutoAttack")
    assert robust_metric([*with_aa[:-1], digits[-1]])[0] == WORST_CASE
    ax = _clean_robust_figure(with_aa, "aa").axes[0]
    assert ax.get_ylabel() == "robust accuracy (%): AutoAttack"
    tuned = "uadat (align_weight=0.05, beta=1.0)"  # the full method at the board's tuned setting
    full = [r for r in with_aa if defense_label(r) == tuned]
    (point,) = [c.lines[0] for c in ax.containers if c.get_label() == f"{tuned} (3 seeds)"]
    assert len(full) == 3 and np.isclose(point.get_ydata()[0], statistics.fmean(r.accuracy["AutoAttack"] for r in full))
