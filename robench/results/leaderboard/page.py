"""``robench leaderboard -f html``: every board on one self-contained page.

One section per board (dataset and threat model): the ranked table, whose columns sort
on a click (a few lines of script; without it the table reads as it is), the noise
sentence, the flags, the tests that paired seeds across machine kinds, the plots
embedded as PNG, the external and reported tables apart, and each run's detail (config
and per-epoch history) folded under the board. Numbers
never wrap; a table wider than the window scrolls inside its section, so the page
itself fits the window. Like the other formats, a pure function of its inputs.
"""
from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Sequence

import pandas as pd

from robench.api.threat import ThreatModel
from robench.results.labels import defense_label, threat_title
from robench.results.leaderboard.external import ExternalRow
from robench.results.leaderboard.formats import (
    EXTERNAL_SENTENCE,
    EXTERNAL_TITLE,
    MACHINES_SENTENCE,
    NOISE_SENTENCE,
    TEXT_COLUMNS,
    by_data_setting,
    crossed_rows,
    data_sentence,
    external_display,
    measured_display,
    ranking_sentence,
    reported_display,
)
from robench.results.leaderboard.reference import ReportedRow
from robench.results.leaderboard.table import CROSSED_MACHINES, UNRELIABLE, flags
from robench.results.records import RunRecord

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;font-size:13px}"
    "h2{margin-top:2em;border-bottom:2px solid #ccc}.scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:.6em 0}th,td{padding:.25em .35em;border-bottom:1px solid #ddd;"
    "white-space:nowrap}td.text{white-space:normal;min-width:7em;max-width:14em}th{background:#f4f4f4;text-align:left;vertical-align:bottom;white-space:normal}td.num{text-align:right;"
    "font-variant-numeric:tabular-nums}caption{text-align:left;color:#555;caption-side:top;white-space:normal}"
    "th.sortable{cursor:pointer}th[aria-sort=ascending]::after{content:' \\25B2'}"
    "th[aria-sort=descending]::after{content:' \\25BC'}p.note,ul.note{color:#555;max-width:70em}"
    ".flags{color:#a40}figure{display:inline-block;margin:.5em 1em .5em 0}figure img{max-width:560px;width:100%}"
    "details.run{margin:.2em 0 .2em 1em}pre{background:#f8f8f8;padding:.5em;overflow-x:auto;max-width:100%}"
)

#: sorts the table whose header cell is clicked (or Enter/Space on it); cells carry their
#: number in data-v, rows without one go last either way
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.classList.add("sortable");
    th.tabIndex = 0;
    function value(row) {
      var v = row.cells[col].getAttribute("data-v");
      return v === null ? null : parseFloat(v);
    }
    function sort() {
      var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir);
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows), sign = dir === "ascending" ? 1 : -1;
      var numeric = rows.some(function (r) { return value(r) !== null; });
      rows.sort(function (a, b) {
        if (!numeric) { return sign * a.cells[col].textContent.localeCompare(b.cells[col].textContent); }
        var x = value(a), y = value(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        return sign * (x - y);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
    });
  });
});
"""

_SCALE = {"G": 1e9, "M": 1e6, "k": 1e3, "s": 1.0, "min": 60.0, "h": 3600.0}
_LEADING_NUMBER = re.compile(r"^[\[±`\s]*(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*(G|M|k|min|s|h)?\b")


def sort_value(cell: str) -> float | None:
    """The number a cell sorts by: ``69.06 ± 0.87`` -> 69.06, ``[66.8, 71.3]`` -> 66.8,
    ``3.5 min`` -> 210, ``1.20 G`` -> 1.2e9; None for text and ``–``."""
    match = _LEADING_NUMBER.match(str(cell))
    if match is None:
        return None
    return float(match.group(1)) * _SCALE.get(match.group(2) or "", 1.0)


def _table(df: pd.DataFrame, caption: str, sortable: bool = True) -> list[str]:
    head = "".join(f"<th scope=col>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for column, value in zip(df.columns, row):
            text, is_text = str(value).replace("`", ""), TEXT_COLUMNS.get(column, False)
            number = None if is_text else sort_value(text)
            attrs = (" class=text" if is_text else " class=num") + (
                f' data-v="{number!r}"' if number is not None else "")
            shown = html.escape(text).replace("=", "=<wbr>") if is_text else html.escape(text)
            cells.append(f"<td{attrs}>{shown}</td>")  # a long setting may break after its "="
        rows.append("<tr>" + "".join(cells) + "</tr>")
    kind = " class=sortable" if sortable else ""
    return [f"<div class=scroll><table{kind}><caption>{html.escape(caption)}</caption>",
            f"<thead><tr>{head}</tr></thead><tbody>", *rows, "</tbody></table></div>"]


#: columns that often hold one value for a whole board; the page states it once instead
_DESCRIBING = ("Architecture", "Seeds", "Epochs", "Checkpoint", "Evaluation", "Ranked by")


def _compact(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The board's table without the describing columns that are the same in every row
    (said once, in the caption) and without the config hash (in each run's detail), so
    that a board fits a 1,400-pixel window."""
    same = [c for c in _DESCRIBING if c in df.columns and len(df) > 1 and df[c].nunique() == 1]
    said = [f"{c.lower()}: {df[c].iloc[0]}" for c in same]
    worst, aa = "Worst case (%)", "AutoAttack (%)"
    if worst in df.columns and aa in df.columns and (df[worst] == df[aa]).all():
        same.append(worst)  # AutoAttack ran last, so it is the worst case
        said.append("worst case: the AutoAttack column")
    out = df.drop(columns=[*same, *(["Config"] if "Config" in df.columns else [])])
    return out.rename(columns={c: "95% CI" for c in out.columns if c.endswith(" 95% CI")}), "; ".join(said)


def _figures(records: Sequence[RunRecord], title: str) -> list[str]:
    from robench.results.plots import clean_vs_robust_png, eps_sweep_png  # matplotlib loads only for a page

    out = []
    for what, png in (("clean vs robust accuracy", clean_vs_robust_png(records, title)),
                      ("accuracy vs eps", eps_sweep_png(records, title))):
        if png is not None:
            data = base64.b64encode(png).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(f"{title}: {what}")}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(what)}</figcaption></figure>")
    return out


def _run_detail(record: RunRecord) -> list[str]:
    """One run, folded: its per-epoch history and its resolved config."""
    worst = record.accuracy.get("worst case")
    summary = (f"<code>{html.escape(record.run_id)}</code> {html.escape(defense_label(record))}, "
               f"{html.escape(record.arch['name'])}, seed {record.seed}, config {html.escape(record.config_hash)}"
               + (f", worst case {worst:.2f}%" if isinstance(worst, float) else ""))
    keys: list[str] = []
    for entry in record.history:
        keys += [k for k in entry if k not in keys]
    history = pd.DataFrame([{k: _cell(h.get(k)) for k in keys} for h in record.history])
    lines = [f"<details class=run><summary>{summary}</summary>"]
    if len(history):
        lines += _table(history, "per-epoch history", sortable=False)
    config = json.dumps(record.config, indent=1, sort_keys=True, default=str)
    return lines + [f"<pre>{html.escape(config)}</pre></details>"]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def _flagged(records: Sequence[RunRecord]) -> list[str]:
    flagged = sorted((r for r in records if flags(r)), key=lambda r: r.run_id)
    if not flagged:
        return []
    return [f"<p class=flags><strong>{html.escape(UNRELIABLE)}</strong>: these runs' evaluations raised flags:</p>"
            "<ul class=flags>",
            *(f"<li><code>{html.escape(r.run_id)}</code>: {html.escape(' '.join(flag.split()))}</li>"
              for r in flagged for flag in flags(r)),
            "</ul>"]


def _crossed(records: Sequence[RunRecord], by_seed: bool) -> list[str]:
    rows = [] if by_seed else crossed_rows(records)
    if not rows:
        return []
    return [f"<p class=note><strong>{CROSSED_MACHINES} Paired across machine kinds</strong>: "
            f"{html.escape(MACHINES_SENTENCE)}:</p><ul class=note>",
            *(f"<li>{html.escape(row)}</li>" for row in rows), "</ul>"]


def _measured(records: Sequence[RunRecord], by_seed: bool) -> list[str]:
    """The measured table, or one per data setting under a sub-heading of its own (the
    notes first, then each table with its flagged runs), as in the markdown board."""
    tables = by_data_setting(records)
    noise = [] if by_seed else [f"<p class=note>{html.escape(NOISE_SENTENCE)}</p>"]
    body = [] if len(tables) == 1 else [f"<p class=note>{html.escape(data_sentence(records))}</p>", *noise]
    for heading, mine in tables:
        table, said = _compact(measured_display(mine, by_seed))
        body += [f"<h3>{html.escape(heading)}</h3>"] if heading else []
        body += _table(table, f"Measured by robench from {len(mine)} run record(s); "
                              f"{ranking_sentence(mine, by_seed)}." + (f" Every row: {said}." if said else ""))
        body += (noise if len(tables) == 1 else []) + _flagged(mine) + _crossed(mine, by_seed)
    return body


def _board(title: str, records: Sequence[RunRecord], reported: Sequence[ReportedRow],
           external: Sequence[ExternalRow], by_seed: bool, plots: bool) -> list[str]:
    body = []
    if records:
        body += _measured(records, by_seed)
        if plots:
            body += _figures(records, title)
    else:
        body.append("<p>No runs recorded yet.</p>")
    if external:
        body += [f"<h3>{html.escape(EXTERNAL_TITLE)}</h3>", *_table(external_display(external), EXTERNAL_SENTENCE)]
    if reported:
        body += ["<h3>Reported (published numbers, not measured by robench)</h3>",
                 *_table(reported_display(reported), "Copied from the cited sources; robench did not run these.")]
    if records:
        body.append(f"<details><summary>Runs ({len(records)}): config and per-epoch history</summary>")
        for record in sorted(records, key=lambda r: (defense_label(r), r.arch["name"], r.seed, r.run_id)):
            body += _run_detail(record)
        body.append("</details>")
    return body


def _boards(records: Iterable[RunRecord], reported: Iterable[ReportedRow],
            external: Iterable[ExternalRow]) -> dict[tuple[str, str], str]:
    """(dataset, threat slug) -> the board's title, for every board anything belongs to:
    boards with runs first, then those with only external or reported rows."""
    measured: dict[tuple[str, str], str] = {}
    for rec in records:
        measured.setdefault((rec.dataset, rec.threat_slug), f"{rec.dataset}, {threat_title(rec)}")
    others: dict[tuple[str, str], str] = {}
    rows: list[ReportedRow | ExternalRow] = [*reported, *external]
    for row in rows:
        if (row.dataset, row.threat_slug) not in measured:
            others.setdefault((row.dataset, row.threat_slug), f"{row.dataset}, {ThreatModel(row.norm, row.eps)}")
    return {**dict(sorted(measured.items())), **dict(sorted(others.items()))}


def render_html(records: Sequence[RunRecord], reported: Sequence[ReportedRow] = (),
                external: Sequence[ExternalRow] = (), by_seed: bool = False, plots: bool = True,
                title: str = "robench leaderboards") -> str:
    """The standalone page: inline CSS, PNGs and script, nothing fetched."""
    boards = _boards(records, reported, external)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if len(boards) > 1:
        body.append("<nav><ul>" + "".join(f'<li><a href="#{html.escape(_anchor(key))}">{html.escape(name)}</a></li>'
                                          for key, name in boards.items()) + "</ul></nav>")
    for key, name in boards.items():
        mine = [r for r in records if (r.dataset, r.threat_slug) == key]
        body += [f'<section id="{html.escape(_anchor(key))}"><h2>{html.escape(name)}</h2>',
                 *_board(name, mine, [r for r in reported if (r.dataset, r.threat_slug) == key],
                         [r for r in external if (r.dataset, r.threat_slug) == key], by_seed, plots),
                 "</section>"]
    if not boards:
        body.append("<p>No runs recorded yet.</p>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n<p>Generated by robench from run records; do not edit by hand.</p>\n"
            f"<script>{_SCRIPT}</script></body></html>\n")


def _anchor(key: tuple[str, str]) -> str:
    return f"board-{key[0]}-{key[1]}"
