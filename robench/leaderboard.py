"""Leaderboards built with pandas from run records, never edited by hand.

Runs are grouped by (defense, architecture, config hash): the same experiment under
different seeds. Each run reports one checkpoint (``best`` by validation accuracy or
``last``, per ``train.select``; the record keeps both), named in the Checkpoint column. Each accuracy shows mean +- sample std over seeds. Rows rank by the
worst case over the evaluation suite (the last column). A row whose evaluation raised
any flag (AutoAttack's sanity checks, robench's gradient-masking checks) is marked
"potentially unreliable" and its flags are listed under the table. The markdown holds
no timestamps, so it regenerates byte for byte from the same records.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robench.engine.evaluate import WORST_CASE
from robench.io import atomic_write_text
from robench.records import RunRecord, SkippedRecord, load_records, record_dir


def _fmt(values: pd.Series) -> str:
    if len(values) > 1:
        return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
    return f"{values.mean():.2f}"


UNRELIABLE = "⚠ potentially unreliable"


def _flags(rec: RunRecord) -> list[str]:
    flags = rec.eval.get("flags") or []
    return [str(f) for f in flags] if isinstance(flags, list) else [str(flags)]


def defense_label(rec: RunRecord) -> str:
    """``trades`` or, with hyperparameters away from the defaults, ``trades (beta=1.0)``."""
    changed = rec.defense.get("changed") or {}
    if not isinstance(changed, dict) or not changed:
        return rec.defense["name"]
    values = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(changed.items()))
    return f"{rec.defense['name']} ({values})"


def _metrics(records: Sequence[RunRecord]) -> list[str]:
    """Accuracy keys in suite order, the worst case last."""
    metrics: list[str] = []
    for rec in records:
        for key in rec.accuracy:
            if key not in metrics and key != WORST_CASE:
                metrics.append(key)
    if any(WORST_CASE in rec.accuracy for rec in records):
        metrics.append(WORST_CASE)
    return metrics


def leaderboard_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per experiment, ranked; accuracy columns are formatted strings."""
    if not records:
        return pd.DataFrame()
    metrics = _metrics(records)
    rows = []
    for rec in records:
        row = {
            "defense": defense_label(rec),
            "arch": rec.arch["name"],
            "config": rec.config_hash,
            "epochs": rec.train.get("epochs"),
            "checkpoint": rec.selected,
            "seed": rec.seed,
            "flags": len(_flags(rec)),
        }
        row.update({m: rec.accuracy.get(m) for m in metrics})
        rows.append(row)
    df = pd.DataFrame(rows)
    rank_metric = metrics[-1]
    grouped = df.groupby(["defense", "arch", "config"], sort=True)
    table = grouped.agg(
        epochs=("epochs", "first"), seeds=("seed", "nunique"), flags=("flags", "sum"),
        checkpoint=("checkpoint", lambda s: ", ".join(sorted(set(s)))),
    )
    table["evaluation"] = table["flags"].map(lambda k: UNRELIABLE if k else "ok")
    table["_rank"] = grouped[rank_metric].mean()
    table["_clean"] = grouped["clean"].mean() if "clean" in df else 0.0
    for m in metrics:
        table[m] = grouped[m].apply(lambda s: _fmt(s.dropna()) if s.notna().any() else "–")
    table = table.reset_index().sort_values(
        ["_rank", "_clean", "defense", "arch", "config"], ascending=[False, False, True, True, True]
    )
    table.insert(0, "rank", range(1, len(table) + 1))
    out = table[["rank", "defense", "arch", *metrics, "seeds", "epochs", "checkpoint", "evaluation", "config"]]
    return out.rename(
        columns={
            "rank": "Rank",
            "defense": "Defense",
            "arch": "Architecture",
            "seeds": "Seeds",
            "epochs": "Epochs",
            "checkpoint": "Checkpoint",
            "config": "Config",
            "evaluation": "Evaluation",
            **{m: {"clean": "Clean", WORST_CASE: "Worst case"}.get(m, m) + " (%)" for m in metrics},
        }
    )


def _alignment(df: pd.DataFrame) -> list[str]:
    text_columns = {"Defense", "Architecture", "Checkpoint", "Config", "Evaluation"}
    return ["left" if c in text_columns else "right" for c in df.columns]


def render_markdown(records: Sequence[RunRecord], title: str, source: str) -> str:
    df = leaderboard_frame(records)
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No runs recorded yet.")
    else:
        lines += [
            f"Measured by robench from {len(records)} run record(s) in `{source}`; "
            "mean ± std over seeds; ranked by the worst case over the evaluation suite (each "
            "attack runs on the points still robust after the ones before it). "
            "Generated by robench from these records: do not edit by hand.",
            "",
            df.to_markdown(index=False, disable_numparse=True, colalign=_alignment(df)),
        ]
        flagged = [rec for rec in records if _flags(rec)]
        if flagged:
            lines += ["", f"**{UNRELIABLE}**: these runs' evaluations raised flags:", ""]
            for rec in sorted(flagged, key=lambda r: r.run_id):
                for flag in _flags(rec):
                    lines.append(f"- `{rec.run_id}` ({rec.defense['name']}, {rec.arch['name']}, "
                                 f"config {rec.config_hash}): {' '.join(flag.split())}")
    return "\n".join(lines) + "\n"


def refresh_leaderboard(
    results_root: Path, dataset: str, threat_slug: str, threat_label: str
) -> tuple[Path, list[SkippedRecord]]:
    """Rebuild ``<results>/<dataset>-<threat slug>.md`` from its records."""
    folder = record_dir(results_root, dataset, threat_slug)
    records, skipped = load_records(folder)
    source = folder.relative_to(results_root).as_posix()
    text = render_markdown(records, f"{dataset}, {threat_label}", source)
    path = atomic_write_text(results_root / f"{dataset}-{threat_slug}.md", text)
    return path, skipped
