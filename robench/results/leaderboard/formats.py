"""One leaderboard, three text outputs: markdown (the committed boards), CSV (numbers
for scripts) and LaTeX (a booktabs table for papers); the HTML page, every board on one
page, is :mod:`robench.results.leaderboard.page`.

Everything is a pure function of the records and reported rows: no timestamps, sorted
input, fixed number formats, so a board regenerates byte for byte.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from robench.core.flops import human
from robench.evaluation.sequential import WORST_CASE
from robench.results.labels import AUTOATTACK, CLEAN, threat_title
from robench.results.leaderboard.external import ExternalRow
from robench.results.leaderboard.reference import ReportedRow
from robench.results.leaderboard.table import (
    CROSSED_MACHINES,
    UNRELIABLE,
    data_settings,
    differing_data,
    experiment_table,
    flags,
    metrics,
    run_machine,
    run_table,
)
from robench.results.records import RunRecord

FORMATS = ("markdown", "csv", "latex", "html")
#: whether a column holds text (left-aligned, may wrap) rather than a number, in every format
TEXT_COLUMNS = {"Rank": False, "Dataset": True, "Threat": True, "Defense": True, "Architecture": True, "Seed": False,
                "Seeds": False, "Epochs": False, "Checkpoint": True, "Ranked by": True, "Evaluation": True,
                "Config": True, "Run": True, "Source": True, "Note": True, "vs top": True, "Model": True,
                "Report": True}


def _name(metric: str) -> str:
    return {CLEAN: "Clean", WORST_CASE: "Worst case"}.get(metric, metric) + " (%)"


def _number(mean: float | None, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _interval(low: float, high: float) -> str:
    return "–" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def _versus_top(top: bool, p: float, tied: bool, crossed: str, untested: str) -> str:
    """``top``, ``tied (p=0.14)``, ``below (p=0.0007)``, ``cannot be tested (no spread)``
    where the shared seeds allow no t-test (the paired differences are all equal, and
    the test divides by their spread: not ``below (p=0)``, which two seeds cannot
    show), or – where fewer than 2 seeds are shared; marked † where paired seeds ran
    on different machine kinds (:data:`MACHINES_SENTENCE`)."""
    if top:
        return "top"
    if untested:
        return f"cannot be tested ({untested})"
    if math.isnan(p):
        return "–"
    return f"{'tied' if tied else 'below'} (p={p:.2g})" + (CROSSED_MACHINES if crossed else "")


def _flops(value: float) -> str:
    return "–" if value is None or math.isnan(value) else human(value)


def _duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _noise_columns(out: pd.DataFrame, df: pd.DataFrame, rank_label: str) -> None:
    """The ranking accuracy's 95% interval over seeds, its test-set standard error and the
    comparison with the top row."""
    out[f"{rank_label} 95% CI"] = [_interval(lo, hi) for lo, hi in zip(df["ci low"], df["ci high"])]
    out["Test SE"] = df["test se"].map(lambda se: "–" if math.isnan(se) else f"± {se:.2f}")
    out["vs top"] = [_versus_top(*row) for row in
                     zip(df["top"], df["vs top p"], df["tied"], df["vs top machines"], df["vs top untested"])]


def measured_display(records: Sequence[RunRecord], by_seed: bool = False) -> pd.DataFrame:
    """The measured table of one data setting (:func:`by_data_setting` splits a board)
    with formatted cells; dataset and threat columns only when the records span more
    than one of them, a "Ranked by" column only when a row lacks AutoAttack."""
    df = run_table(records) if by_seed else experiment_table(records)
    if df.empty:
        return df
    keys = metrics(records)
    out = pd.DataFrame({"Rank": df["rank"].astype(str)})
    for col, name in (("dataset", "Dataset"), ("threat", "Threat")):
        if df[col].nunique() > 1:
            out[name] = df[col]
    out["Defense"], out["Architecture"] = df["defense"], df["arch"]
    for m in keys:
        stds = [None] * len(df) if by_seed else df[f"{m} std"]
        out[_name(m)] = [_number(v, s) for v, s in zip(df[m], stds)]
    if by_seed:
        out["Seed"], out["Run"] = df["seed"].astype(str), df["run_id"].map(lambda r: f"`{r}`")
    else:
        out["Seeds"] = df["seeds"].astype(str)
        _noise_columns(out, df, "AutoAttack" if (df["ranked_by"] == AUTOATTACK).all() else "Ranking accuracy")
    flops, seconds = ("train_flops", "train_s") if by_seed else ("train flops", "train s")
    out["Train FLOP/img"], out["Train time"] = df[flops].map(_flops), df[seconds].map(_duration)
    out["Epochs"] = df["epochs"].astype(str)
    out["Checkpoint"] = df["checkpoint"]
    if (df["ranked_by"] != AUTOATTACK).any():
        out["Ranked by"] = df["ranked_by"]
    out["Evaluation"] = df["flags"].map(lambda k: UNRELIABLE if k else "ok")
    out["Config"] = df["config"]
    return out


def reported_display(rows: Sequence[ReportedRow]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    others = sorted({k for r in rows for k in r.other})
    ordered = sorted(rows, key=lambda r: (-(r.autoattack or -1), r.defense, r.arch, r.source))
    out = pd.DataFrame({
        "Defense": [r.defense for r in ordered], "Architecture": [r.arch for r in ordered],
        "Threat": [f"{r.norm} {r.eps}" for r in ordered],
        "Clean (%)": [_number(r.clean) for r in ordered], "AutoAttack (%)": [_number(r.autoattack) for r in ordered],
        **{f"{k} (%)": [_number(r.other.get(k)) for r in ordered] for k in others},
        "Source": [r.source for r in ordered], "Note": [r.note or "" for r in ordered],
    })
    return out


def external_display(rows: Sequence[ExternalRow]) -> pd.DataFrame:
    """One row per external model: its accuracies under its own suite, test points and flags."""
    if not rows:
        return pd.DataFrame()
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.accuracy if k not in keys and k != WORST_CASE]
    keys = [CLEAN, *(k for k in keys if k != CLEAN)] if CLEAN in keys else keys
    return pd.DataFrame({
        "Model": [f"`{r.model}`" for r in rows],
        **{_name(k): [_number(r.accuracy.get(k)) for r in rows] for k in [*keys, WORST_CASE]},
        "Test points": [str(r.n_test) if r.n_test is not None else "–" for r in rows],
        "Evaluation": [UNRELIABLE if r.flags else "ok" for r in rows],
        "Report": [f"`{r.report_id}`" for r in rows],
    })


#: what an external row is, in every format
EXTERNAL_TITLE = "External models (evaluated by robench, not trained by it)"
EXTERNAL_SENTENCE = (
    "Networks from outside robench (robench eval --model, or --weights with --arch), evaluated under this "
    "threat model, each with its own suite and test points: not ranked with the runs above nor tested "
    "against them."
)


def _markdown_table(df: pd.DataFrame) -> str:
    align = ["left" if TEXT_COLUMNS.get(c, False) else "right" for c in df.columns]
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def ranking_sentence(records: Sequence[RunRecord], by_seed: bool) -> str:
    unit = "one row per run (seed)" if by_seed else "mean ± std over seeds"
    if all(AUTOATTACK in r.accuracy for r in records):
        rule = "ranked by AutoAttack accuracy"
    else:
        rule = ("ranked by AutoAttack accuracy where the suite had AutoAttack, otherwise by the worst case "
                "(the Ranked by column says which)")
    return f"{unit}; {rule}; each attack of a suite runs on the points still robust after the ones before it"


def _reports_sentence(records: Sequence[RunRecord]) -> str:
    completed = sum(1 for r in records if r.eval.get("report"))
    if not completed:
        return ""
    return (f" {completed} run(s) whose own suite had no AutoAttack show a later `robench eval` report on the "
            "same checkpoint and threat model (Checkpoint: eval report; the reports are in `evaluations/`).")


#: how to read the noise and cost columns of a board with one row per experiment
NOISE_SENTENCE = (
    "The 95% CI is the Student-t interval of the ranking accuracy's mean over seeds; Test SE is that "
    "accuracy's binomial standard error on the test points (the noise of the test sample itself); vs top is a "
    "paired t-test of each row against the top row over the seeds both have, Holm-corrected over the rows "
    "compared with that top row: tied rows are not distinguishable from the top at the 5% level. "
    "Train FLOP/img is the training cost per training image over all epochs as the defense counts it; "
    "Train time is the measured wall time of the epochs on the device named in the records."
)

#: what a † in the vs top column means (said under the table, with the seeds and kinds)
MACHINES_SENTENCE = (
    "some seeds these rows share with their top row ran on different machine kinds (CPU model and SIMD "
    "features, GPU; for a run completed by an eval report, also where that evaluated). The same seed and config "
    "can give other numbers on other hardware, and pairing by seed does not remove that: these tests count it "
    "as a difference between the rows"
)


def crossed_rows(records: Sequence[RunRecord]) -> list[str]:
    """``far (smallcnn, config 1a2b): seed 3: top row on A, this row on B`` for each row of
    one table whose test against the top row paired seeds across machine kinds; none
    where no run names its machine (records from before robench recorded it)."""
    if not any(run_machine(r) for r in records):
        return []
    df = experiment_table(records)
    return [f"{row['defense']} ({row['arch']}, config {row['config']}): {row['vs top machines']}"
            for _, row in df.iterrows() if row["vs top machines"]]


def by_data_setting(records: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """(heading, records) per table of a board: one table per data setting, each ranked
    and tested on its own; a board whose runs all share one setting has one table and
    no heading ("")."""
    settings = data_settings(records)
    if len(settings) == 1:
        return [("", list(records))]
    keys = ", ".join(differing_data(records))
    return [(f"Data: {label}" if label else f"Data: dataset defaults ({keys} unset)", mine) for label, mine in settings]


def data_sentence(records: Sequence[RunRecord]) -> str:
    """Why a board has one table per data setting (said above the tables)."""
    return (f"These runs trained on {len(data_settings(records))} data settings, which differ in "
            f"{', '.join(differing_data(records))}. Rows on different data are no like-for-like comparison, so each "
            "setting has its own table: its own ranking, intervals and tests against its own top row. Dataset "
            "defaults are the dataset's own values of these settings (null in the config), e.g. all its training "
            "images.")


def _flagged_markdown(records: Sequence[RunRecord]) -> list[str]:
    flagged = sorted((r for r in records if flags(r)), key=lambda r: r.run_id)
    if not flagged:
        return []
    return ["", f"**{UNRELIABLE}**: these runs' evaluations raised flags:", "",
            *(f"- `{r.run_id}` ({r.defense['name']}, {r.arch['name']}, config {r.config_hash}): "
              f"{' '.join(flag.split())}" for r in flagged for flag in flags(r))]


def _crossed_markdown(records: Sequence[RunRecord], by_seed: bool) -> list[str]:
    rows = [] if by_seed else crossed_rows(records)
    if not rows:
        return []
    return ["", f"**{CROSSED_MACHINES} Paired across machine kinds**: {MACHINES_SENTENCE}:", "",
            *(f"- {row}" for row in rows)]


def _measured_markdown(records: Sequence[RunRecord], by_seed: bool) -> list[str]:
    """The measured table(s) and their notes: one table, or one per data setting under
    a sub-heading of its own, each followed by its flagged runs."""
    tables = by_data_setting(records)
    noise = [] if by_seed else ["", NOISE_SENTENCE]
    if len(tables) == 1:
        return ["", _markdown_table(measured_display(records, by_seed)), *noise, *_flagged_markdown(records),
                *_crossed_markdown(records, by_seed)]
    lines = ["", data_sentence(records), *noise]
    for heading, mine in tables:
        lines += ["", f"## {heading}", "", _markdown_table(measured_display(mine, by_seed)), *_flagged_markdown(mine),
                  *_crossed_markdown(mine, by_seed)]
    return lines


def render_markdown(records: Sequence[RunRecord], title: str, source: str,
                    reported: Sequence[ReportedRow] = (), by_seed: bool = False,
                    external: Sequence[ExternalRow] = ()) -> str:
    lines = [f"# {title}", ""]
    if not records:
        lines.append("No runs recorded yet.")
    else:
        lines += [
            f"Measured by robench from {len(records)} run record(s) in `{source}`; "
            f"{ranking_sentence(records, by_seed)}.{_reports_sentence(records)} "
            "Generated by robench from these records: do not edit by hand.",
            *_measured_markdown(records, by_seed),
        ]
    if external:
        lines += ["", f"## {EXTERNAL_TITLE}", "", EXTERNAL_SENTENCE, "", _markdown_table(external_display(external))]
    if reported:
        lines += ["", "## Reported (published numbers, not measured by robench)", "",
                  "Copied from the cited sources for comparison; robench did not run these.", "",
                  _markdown_table(reported_display(reported))]
    return "\n".join(lines) + "\n"


def render_csv(records: Sequence[RunRecord], reported: Sequence[ReportedRow] = (), by_seed: bool = False,
               external: Sequence[ExternalRow] = ()) -> str:
    """Numbers unformatted (mean and std columns), one ``kind`` column: measured, external or
    reported; a ``vs top machines`` column only where a row's test paired seeds across
    machine kinds, a ``vs top untested`` one only where a row's could not be made (its
    ``vs top p`` is empty; ``no spread``: its paired differences are all equal)."""
    df = run_table(records) if by_seed else experiment_table(records)
    for column in ("vs top untested", "vs top machines"):
        if column in df and not df[column].any():
            df = df.drop(columns=column)
    df = df.rename(columns={m: f"{m} mean" for m in (metrics(records) if records else [])}) if not by_seed else df
    df.insert(0, "kind", "measured")
    suffix = "" if by_seed else " mean"
    rep = pd.DataFrame([{
        "kind": "reported", "dataset": r.dataset, "threat": f"{r.norm} {r.eps}", "defense": r.defense,
        "arch": r.arch, f"{CLEAN}{suffix}": r.clean, f"{AUTOATTACK}{suffix}": r.autoattack,
        **{f"{k}{suffix}": v for k, v in r.other.items()}, "source": r.source, "note": r.note,
    } for r in reported])
    ext = pd.DataFrame([{
        "kind": "external", "dataset": r.dataset, "threat": r.threat, "defense": "external", "arch": r.model,
        **{f"{k}{suffix}": v for k, v in r.accuracy.items()}, "n_test": r.n_test, "flags": len(r.flags),
        "source": r.report_id,
    } for r in external])
    frames = [frame for frame in (df, ext, rep) if len(frame)]
    both = pd.concat(frames, ignore_index=True) if frames else df
    return both.to_csv(index=False, float_format="%.4f", lineterminator="\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "–": "--", "⚠": "", "†": r"\textdagger{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text).replace("`", "")).strip()


def _latex_tabular(df: pd.DataFrame, caption: str) -> list[str]:
    spec = "".join("l" if TEXT_COLUMNS.get(c, False) else "r" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(_tex(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    return lines + [r"\bottomrule", r"\end{tabular}", r"\end{table}"]


def render_latex(records: Sequence[RunRecord], title: str, reported: Sequence[ReportedRow] = (),
                 by_seed: bool = False, external: Sequence[ExternalRow] = ()) -> str:
    """booktabs tables (``\\usepackage{booktabs}``): measured, then reported in a table of its own."""
    lines = [f"% {title}: generated by robench from run records; do not edit by hand"]
    for i, (heading, mine) in enumerate(by_data_setting(records)):
        crossed = f" {CROSSED_MACHINES}: {MACHINES_SENTENCE}." if not by_seed and crossed_rows(mine) else ""
        lines += [""] * (i > 0) + _latex_tabular(measured_display(mine, by_seed).drop(columns=["Config"]),
                                             f"{title}{f', {heading}' if heading else ''}. Measured by robench; "
                                             f"{ranking_sentence(mine, by_seed)}.{crossed}")
    if external:
        lines += [""] + _latex_tabular(external_display(external).drop(columns=["Report"]),
                                       f"{title}: {EXTERNAL_TITLE}. {EXTERNAL_SENTENCE}")
    if reported:
        lines += [""] + _latex_tabular(reported_display(reported).drop(columns=["Note"]),
                                       f"{title}: reported by the cited sources, not measured by robench.")
    return "\n".join(lines) + "\n"


def board_title(records: Sequence[RunRecord]) -> str:
    """``digits, Linf eps=3/16`` for one dataset and threat; a plain title otherwise."""
    pairs = {(r.dataset, threat_title(r)) for r in records}
    return ", ".join(pairs.pop()) if len(pairs) == 1 else "robench leaderboard"
