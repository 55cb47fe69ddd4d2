"""``robench compare``: a variant against its base row, paired over seeds, with a margin."""
from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from robench.cli.common import out


def compare(
    base: str = typer.Argument(..., metavar="BASE", help="The base row's label, as the board shows it (e.g. uadat)."),
    variant: str = typer.Argument(..., metavar="VARIANT", help="The variant's label (e.g. 'uadat (align_fraction=0.25)')."),
    margin: float = typer.Option(1.0, "--margin", min=0.0, help="Points the variant may lose and still count as non-inferior."),
    metric: str | None = typer.Option(None, "--metric", metavar="NAME",
        help="The accuracy compared (default: the board's ranking one, AutoAttack or the worst case)."),
    data: list[str] | None = typer.Option(None, "--data", metavar="NAME", help="Only this dataset's runs."),
    arch: list[str] | None = typer.Option(None, "--arch", metavar="NAME", help="Only this architecture's runs."),
    threat: list[str] | None = typer.Option(None, "--threat", metavar="THREAT", help="Only this threat model's runs."),
    results_dir: Path | None = typer.Option(None, "--results-dir", metavar="DIR", help="Results folder (default: see README)."),
) -> None:
    """Is VARIANT at most --margin points worse than BASE? A paired one-sided t-test over
    the seeds both have (95%): non-inferior when the lower bound of the mean difference
    lies above -margin."""
    from robench.core.paths import results_root
    from robench.results.leaderboard import Filters
    from robench.results.leaderboard.table import CROSSED_MACHINES, crossed_text
    from robench.workflows.compare import compare as run_compare

    found = run_compare(results_root(results_dir), base, variant, filters=Filters(data or (), arch or (), (), threat or ()),
                        metric=metric, margin=margin)
    table = Table(title=f"{found.board}: {found.metric} (%)", show_edge=False)
    for column in ("seed", found.base, found.variant, "difference"):
        table.add_column(column, justify="right", overflow="fold")
    for seed in sorted(set(found.base_by_seed) | set(found.variant_by_seed)):
        a, b = found.base_by_seed.get(seed), found.variant_by_seed.get(seed)
        mark = CROSSED_MACHINES if seed in found.crossed else ""
        table.add_row(str(seed), "-" if a is None else f"{a:.2f}", "-" if b is None else f"{b:.2f}",
                      "-" if a is None or b is None else f"{b - a:+.2f}{mark}")
    out.print(table)
    if found.crossed:
        out.print(Text(f"{CROSSED_MACHINES} ran on different machine kinds: "
                       f"{crossed_text(found.crossed, found.base, found.variant)}. The same seed and config can give "
                       "other numbers on other hardware, and pairing by seed does not remove that: the test below "
                       "counts it as a difference between the rows."), soft_wrap=True)
    r = found.result
    if r is None:
        out.print(Text("fewer than two seeds in common: no test (run both with the same seeds)"), soft_wrap=True)
        return
    verdict = "non-inferior" if r.noninferior else "not shown non-inferior"
    p = "no spread: every seed's difference is the same, so no test; the mean decides" if math.isnan(r.p) else f"p = {r.p:.2g}"
    out.print(Text(f"mean difference {r.mean:+.2f} points over {len(r.seeds)} seeds; one-sided 95% lower bound "
                   f"{r.lower:+.2f}; margin {r.margin:.2f}: {verdict} ({p})"), soft_wrap=True)
