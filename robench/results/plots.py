"""PNG figures from run records: training curves, accuracy versus eps, clean versus robust.

Like the leaderboards, figures are pure functions of the records, so every point can be
traced to a run and regenerated at will. They are built with matplotlib's object API
(``Figure`` + the Agg canvas) rather than pyplot, so plotting needs no display and leaves
no global state in a long-lived process or a test session. PNGs are written atomically:
a reader (a docs build, a browser) never sees a half-written image.
"""
from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from robench.api.errors import UserError
from robench.api.io import atomic_write_bytes
from robench.results.labels import defense_label, ranking_rule, threat_label
from robench.results.records import RunRecord

DPI = 120
#: history keys drawn in the accuracy panel of plot_run, with their legend labels
_CURVES = {"val_clean": "validation clean", "val_pgd": "validation PGD",
           "accuracy": "training (on the defense's inputs)"}


def robust_metric(records: Sequence[RunRecord]) -> tuple[str, str]:
    """(accuracy key, axis label) of the robust accuracy: the leaderboard's ranking rule,
    so a figure and the board beside it compare experiments by the same attack.

    AutoAttack only when every run has it (mixing suites would compare different
    attacks); otherwise the worst case, labelled with the suite's last attack.
    """
    return ranking_rule(records)


def _experiments(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Seeds grouped as the leaderboard groups them (dataset, threat, defense, arch,
    config), each under the shortest label that tells the groups apart."""
    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for rec in records:
        key = (defense_label(rec), rec.arch["name"], rec.dataset,
               threat_label(rec), rec.config_hash)
        groups.setdefault(key, []).append(rec)
    varies = [len({k[i] for k in groups}) > 1 for i in range(4)]
    varies[0] = True  # the defense always names the group
    labels: dict[str, list[RunRecord]] = {}
    for key, runs in sorted(groups.items()):
        label = ", ".join(part for part, shown in zip(key, varies) if shown)
        if sum(1 for k in groups if all(a == b for a, b, shown in zip(k, key, varies) if shown)) > 1:
            label += f" [{key[4]}]"  # the same names, different settings elsewhere: the config hash
        labels[label] = runs
    return labels


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Sample std (ddof=1), as in the leaderboard; 0 for a single seed."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _seeds(runs: Sequence[RunRecord]) -> str:
    return f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"


def _legend(fig: Figure, ax: Axes) -> None:
    """Below the axes: inside, it would hide whichever curve runs through its corner;
    beside them, long ablation labels would squeeze the plot."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(labels) > 3 else len(labels),
               fontsize="small", title="mean ± std over seeds")


def _percent_axis(ax: Axes) -> None:
    """0 to 100 with a little room, so a curve at 100% or a marker at 0% is not clipped."""
    ax.set_ylim(-2, 102)
    ax.set_yticks(range(0, 101, 20))


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write_bytes(path, figure_png(fig))


def _run_figure(record: RunRecord) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in record.history]
    for key, label in _CURVES.items():
        values = [h.get(key) for h in record.history]
        if any(v is not None for v in values):
            acc_ax.plot(epochs, [math.nan if v is None else v for v in values], label=label)
    best = record.checkpoints.get("best")
    if best and best.get("epoch") is not None:
        key = best.get("selected_by") or "val_pgd"
        row = next((h for h in record.history if h["epoch"] == best["epoch"]), {})
        if row.get(key) is not None:
            acc_ax.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
            acc_ax.plot([best["epoch"]], [row[key]], marker="*", markersize=14, color="black", linestyle="none",
                        label=f"best epoch ({best['epoch']}, by {_CURVES.get(key, key)})")
    _percent_axis(acc_ax)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss_ax.plot(epochs, [h["loss"] for h in record.history], color="tab:red")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize="small")
    fig.suptitle(f"{record.run_id}\n{defense_label(record)}, {record.arch['name']}, "
                 f"reports the {record.selected} checkpoint")
    return fig


def plot_run(record: RunRecord, path: Path) -> Path:
    """One run's training curves, to see over- or under-fitting and robust overfitting."""
    return _save(_run_figure(record), Path(path))


def _sweep_figure(records: Sequence[RunRecord], title: str, source: str) -> Figure:
    swept = [rec for rec in records if (rec.eval.get("eps_sweep") or {}).get("points")]
    if not swept:
        raise UserError(f"no record in {source} has an eps sweep; run with --eps-sweep")
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.subplots()
    ticks: dict[float, str] = {}
    for label, runs in _experiments(swept).items():
        by_eps: dict[float, list[float]] = {}
        for rec in runs:
            for p in rec.eval["eps_sweep"]["points"]:
                by_eps.setdefault(p["eps_value"], []).append(p["accuracy"])
                ticks.setdefault(p["eps_value"], p["eps"])
        xs = sorted(by_eps)
        stats = [_mean_std(by_eps[x]) for x in xs]
        means = [m for m, _ in stats]
        (line,) = ax.plot(xs, means, marker="o", label=f"{label} ({_seeds(runs)})")
        if len(runs) > 1:
            ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats],
                            color=line.get_color(), alpha=0.2)
    attacks = sorted({rec.eval["eps_sweep"]["attack"] for rec in swept})
    ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)], rotation=45 if len(ticks) > 6 else 0)
    budget = float(swept[0].threat["eps_value"])
    ax.axvline(budget, color="grey", linestyle=":", linewidth=1)  # the threat model's eps
    ax.set(xlabel=f"eps ({swept[0].threat['norm']}); dotted: the threat model's eps",
           ylabel="robust accuracy (%)", title=f"{title}\n{'; '.join(attacks)}")
    _percent_axis(ax)
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    return fig


def plot_eps_sweep(
    records: Sequence[RunRecord], path: Path, title: str, *, source: str = "the given records"
) -> Path:
    """Accuracy versus eps: a curve that does not fall to ~0 at large eps hints at gradient masking.

    ``source`` names where the records came from, for the error when none has a sweep.
    """
    return _save(_sweep_figure(records, title, source), Path(path))


def _label_points(fig: Figure, ax: Axes, points: Sequence[tuple[float, float, str, Any]]) -> None:
    """Name each point beside it, stepping a label down (with a leader line) until it
    covers no marker and no label placed before: an ablation's experiments cluster within
    a point or two. The layout is fixed first and then frozen, so the checked boxes stay true."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()
    taken = [Bbox.from_extents(*(ax.transData.transform((x, y)) - 5), *(ax.transData.transform((x, y)) + 5))
             for x, y, _, _ in points]
    for x, y, label, color in sorted(points, key=lambda p: -p[1]):
        left = ax.transLimits.transform((x, y))[0] > 0.6  # text toward the middle, not out of the axes
        # the colour ties a label to its point; the leader line starts at the label's near end
        style: dict[str, Any] = {"ha": "right" if left else "left", "fontsize": "small", "color": color}
        leader = {"arrowstyle": "-", "color": color, "lw": 0.5, "relpos": (float(left), 0.5)}
        for step in range(4 * len(points) + 1):
            text = ax.annotate(label, (x, y), xytext=(-7 if left else 7, 5 - 12 * step), textcoords="offset points",
                               arrowprops=leader if step else None, **style)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the text alone, not its leader line
            if not any(box.overlaps(other) for other in taken):
                break
            text.remove()
        else:
            ax.annotate(label, (x, y), xytext=(-7 if left else 7, 5), textcoords="offset points",
                        **style)  # no free spot: overlap rather than drop a label
        taken.append(box)


def _clean_robust_figure(records: Sequence[RunRecord], title: str) -> Figure:
    if not records:
        raise UserError("no run records to plot")
    key, metric = robust_metric(records)
    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    points = []
    for label, runs in _experiments(records).items():
        (cx, sx), (cy, sy) = (_mean_std([r.accuracy[k] for r in runs]) for k in ("clean", key))
        spread = len(runs) > 1
        bars = ax.errorbar([cx], [cy], xerr=[sx] if spread else None, yerr=[sy] if spread else None,
                           marker="o", capsize=3, linestyle="none", label=f"{label} ({_seeds(runs)})")
        points.append((cx, cy, label, bars.lines[0].get_color()))
    ax.set(xlabel="clean accuracy (%)", ylabel=f"robust accuracy (%): {metric}", title=title)
    # zoomed on the points (they often cluster), but never past 0-100 plus room for a marker
    lo_x, hi_x = ax.get_xlim()
    lo_y, hi_y = ax.get_ylim()
    ax.set_xlim(max(-2.0, lo_x - 1), min(102.0, hi_x + 1))
    ax.set_ylim(max(-2.0, lo_y - 1), min(102.0, hi_y + 1))
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    _label_points(fig, ax, points)
    return fig


def figure_png(fig: Figure) -> bytes:
    """A figure as PNG bytes (for pages that embed their plots)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def clean_vs_robust_png(records: Sequence[RunRecord], title: str) -> bytes:
    return figure_png(_clean_robust_figure(records, title))


def eps_sweep_png(records: Sequence[RunRecord], title: str) -> bytes | None:
    """The eps-sweep plot, or None when no record has a sweep."""
    if not any((rec.eval.get("eps_sweep") or {}).get("points") for rec in records):
        return None
    return figure_png(_sweep_figure(records, title, "the records"))


def plot_clean_vs_robust(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """The accuracy-robustness trade-off, one point per experiment."""
    return _save(_clean_robust_figure(records, title), Path(path))
