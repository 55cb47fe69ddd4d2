"""``robench leaderboard`` and ``robench plot``: read run records, never train.

Registered on the main app by :mod:`robench.cli.main`, which owns exit codes and error lines.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text

from robench.api.errors import UserError

if TYPE_CHECKING:
    from robench.results.leaderboard import ExternalRow, ReportedRow
    from robench.results.records import RunRecord

err = Console(stderr=True, highlight=False, soft_wrap=True)

_RESULTS_OPT = typer.Option(None, "--results-dir", metavar="DIR", help="Where the records are (default: see README).")
_DATA = typer.Option(None, "--data", metavar="NAME", help="Only this dataset (repeatable).")
_ARCH = typer.Option(None, "--arch", metavar="NAME", help="Only this architecture (repeatable).")
_DEFENSE = typer.Option(None, "--defense", metavar="NAME", help="Only this defense (repeatable).")
_THREAT = typer.Option(None, "--threat", metavar="THREAT",
    help='Only this threat model, e.g. linf-8_255 or "Linf 8/255" (repeatable).')


def _selected(
    results_dir: Path | None, data: list[str] | None, arch: list[str] | None,
    defense: list[str] | None, threat: list[str] | None, every_board: bool = False,
    command: str = "robench leaderboard",
) -> tuple[Path, list[RunRecord], list[ReportedRow], list[ExternalRow]]:
    """(results root, filtered records, reported rows and external models for the same
    datasets and threats; with ``every_board`` and no filter, those of boards without
    runs as well). ``command`` is the one an error line suggests again with the folder."""
    from robench.core.paths import results_root
    from robench.results.leaderboard import Filters, external_in, load_reported, load_shown
    from robench.results.reports import REPORTS_FOLDER

    root = results_root(results_dir)
    records, skipped = load_shown(root / "records", root / REPORTS_FOLDER)
    reported, bad = load_reported(root)
    for item in skipped + bad:
        err.print(Text(f"warning: skipped {item.path}: {item.reason}", style="yellow"))
    filters = Filters(data or (), arch or (), defense or (), threat or ())
    chosen = filters.apply(records)
    wanted = {(r.dataset, r.threat_slug) for r in chosen}
    outside = external_in(root / REPORTS_FOLDER)
    if every_board and not (data or arch or defense or threat):  # boards of no run too
        wanted |= {(r.dataset, r.threat_slug) for r in reported} | {(r.dataset, r.threat_slug) for r in outside}
    shown = [row for row in reported if filters.keep_reported(row)
             and (not chosen or (row.dataset, row.threat_slug) in wanted)]
    external = [row for row in outside if filters.keep_external(row)
                and (not chosen or (row.dataset, row.threat_slug) in wanted)]
    if not chosen and not shown and not external:
        if records or reported:
            raise UserError(f"no run records or reported rows match the filters in {root}")
        raise UserError(f"no run records or reported rows exist in {root}{_committed_boards_hint(root, command)}")
    return root, chosen, shown, external


#: where a clone of the robench repository keeps its committed boards and their records
COMMITTED_BOARDS = "leaderboards"


def _committed_boards_hint(root: Path, command: str) -> str:
    """In a clone of the repository the committed boards are one flag away, and a
    newcomer who runs the command there first meets an empty default folder: say where."""
    here = Path.cwd() / COMMITTED_BOARDS
    if not (here / "records").is_dir() or here.resolve() == root.resolve():
        return ""
    return (f"; this checkout's committed boards are in ./{COMMITTED_BOARDS}: "
            f"{command} --results-dir {COMMITTED_BOARDS}")


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from robench.api.io import atomic_write_text

    path = atomic_write_text(output.expanduser(), text)
    err.print(Text(f"wrote {path}"))


def leaderboard(
    data: list[str] | None = _DATA,
    arch: list[str] | None = _ARCH,
    defense: list[str] | None = _DEFENSE,
    threat: list[str] | None = _THREAT,
    by: str = typer.Option("experiment", "--by", metavar="experiment|seed",
        help="One row per experiment (mean ± std over seeds) or per run."),
    fmt: str = typer.Option("markdown", "--format", "-f", metavar="FORMAT",
        help="markdown, csv, latex, html, or robustbench (with --run)."),
    output: Path | None = typer.Option(None, "--output", "-o", metavar="FILE", help="Write here instead of stdout."),
    run: str | None = typer.Option(None, "--run", metavar="RUN",
        help="The run to export with --format robustbench (id or unique prefix)."),
    name: str | None = typer.Option(None, "--name", help="RobustBench: the entry's name (paper title)."),
    link: str = typer.Option("", "--link", help="RobustBench: link to the paper or code."),
    authors: str = typer.Option("", "--authors", help="RobustBench: authors."),
    venue: str = typer.Option("", "--venue", help="RobustBench: venue."),
    additional_data: bool = typer.Option(False, "--additional-data", help="RobustBench: trained with extra data."),
    refresh: bool = typer.Option(False, "--refresh", help="Rebuild every <dataset>-<threat>.md board in the results folder."),
    results_dir: Path | None = _RESULTS_OPT,
) -> None:
    """Rank recorded runs: markdown (default), CSV, LaTeX, HTML, or a RobustBench entry.

    Runs group by dataset, threat model, defense, architecture and config; each row is the
    mean ± std over seeds, ranked by AutoAttack accuracy (the worst case where a suite had no
    AutoAttack, marked). Published numbers show apart, as "reported".
    """
    from robench.results.leaderboard.robustbench import model_info

    if refresh:
        if data or arch or defense or threat or run or fmt != "markdown" or output:
            raise typer.BadParameter("rebuilds every board as committed; it takes no filters or format", param_hint="--refresh")
        _refresh(results_dir)
        return
    _check_format(by, fmt, run)
    root, records, reported, external = _selected(results_dir, data, arch, defense, threat, every_board=fmt == "html")
    if fmt == "robustbench":
        record = _find_run(records, str(run), root / "records")
        info = model_info(record, name=name, link=link, authors=authors, venue=venue,
                          additional_data=additional_data, results_root=root)
        _emit(json.dumps(info, indent=2) + "\n", output)
        return
    _emit(_render(fmt, records, reported, by == "seed", external), output)


def _refresh(results_dir: Path | None) -> None:
    """Rebuild every committed board; print the paths written."""
    from robench.core.paths import results_root
    from robench.results.leaderboard import refresh_all

    paths, skipped = refresh_all(results_root(results_dir))
    for item in skipped:
        err.print(Text(f"warning: skipped {item.path}: {item.reason}", style="yellow"))
    for path in paths:
        sys.stdout.write(f"{path}\n")


def _check_format(by: str, fmt: str, run: str | None) -> None:
    from robench.results.leaderboard import FORMATS

    if by not in ("experiment", "seed"):
        raise typer.BadParameter(f"expected experiment or seed, got {by!r}", param_hint="--by")
    if fmt not in (*FORMATS, "robustbench"):
        raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}, robustbench; got {fmt!r}", param_hint="--format")
    if (fmt == "robustbench") != (run is not None):
        raise typer.BadParameter("--format robustbench and --run RUN go together", param_hint="--run")


def _render(fmt: str, records: list[Any], reported: list[Any], by_seed: bool, external: list[Any]) -> str:
    """The board in one of the text formats."""
    from robench.results.leaderboard import board_title, render_csv, render_html, render_latex, render_markdown

    title, source = board_title(records), "records"
    renderers = {
        "markdown": lambda: render_markdown(records, title, source, reported, by_seed, external),
        "csv": lambda: render_csv(records, reported, by_seed, external),
        "latex": lambda: render_latex(records, title, reported, by_seed, external),
        "html": lambda: render_html(records, reported, external, by_seed),
    }
    return renderers[fmt]()


plot_app = typer.Typer(help="PNG plots from run records (matplotlib).", no_args_is_help=True)


def _find_run(records: list[RunRecord], run: str, where: Path) -> RunRecord:
    matches = [r for r in records if r.run_id == run] or [r for r in records if r.run_id.startswith(run)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise UserError(f"{found} with id {run!r} among the records in {where}")
    return matches[0]


@plot_app.command("run")
def plot_run_curves(
    run: str = typer.Argument(..., metavar="RUN", help="Run id (or a unique prefix)."),
    output: Path | None = typer.Option(None, "--output", "-o", metavar="FILE",
        help="PNG path (default: <results>/plots/<run id>.png)."),
    results_dir: Path | None = _RESULTS_OPT,
) -> None:
    """Training curves of one run: validation clean and PGD accuracy, training accuracy and loss per epoch."""
    from robench.results.plots import plot_run

    root, records, _, _ = _selected(results_dir, None, None, None, None, command=f"robench plot run {run}")
    record = _find_run(records, run, root / "records")
    path = plot_run(record, output.expanduser() if output else root / "plots" / f"{record.run_id}.png")
    sys.stdout.write(f"{path}\n")


@plot_app.command("board")
def plot_board(
    data: list[str] | None = _DATA,
    arch: list[str] | None = _ARCH,
    defense: list[str] | None = _DEFENSE,
    threat: list[str] | None = _THREAT,
    output: Path | None = typer.Option(None, "--output", "-o", metavar="DIR",
        help="Folder for the PNGs (default: <results>/plots)."),
    results_dir: Path | None = _RESULTS_OPT,
) -> None:
    """Per leaderboard (dataset and threat): clean vs robust accuracy, and accuracy vs eps where runs recorded an eps sweep."""
    from robench.results.leaderboard.formats import board_title
    from robench.results.plots import plot_clean_vs_robust, plot_eps_sweep

    root, records, _, _ = _selected(results_dir, data, arch, defense, threat, command="robench plot board")
    if not records:
        raise UserError(f"no run records match the filters in {root / 'records'}")
    folder = output.expanduser() if output else root / "plots"
    boards: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        boards.setdefault((rec.dataset, rec.threat_slug), []).append(rec)
    for (dataset, slug), recs in sorted(boards.items()):
        title = board_title(recs)
        sys.stdout.write(f"{plot_clean_vs_robust(recs, folder / f'{dataset}-{slug}-clean-vs-robust.png', title)}\n")
        if any(r.eval.get("eps_sweep") for r in recs):
            sys.stdout.write(f"{plot_eps_sweep(recs, folder / f'{dataset}-{slug}-eps-sweep.png', title)}\n")
        else:
            err.print(Text(f"note: no {dataset} {slug} run recorded an eps sweep (robench run --eps-sweep); "
                           "no accuracy-vs-eps plot"))
