"""Run records to pandas tables: one row per run, or one per experiment over its seeds.

An experiment is a (dataset, threat model, defense, architecture, config hash) group:
the same settings under different seeds. Each run reports one checkpoint (``best`` by
validation accuracy or ``last``, per ``train.select``; the record keeps both). Rows
rank within their data setting (the ``data`` settings in which runs differ, e.g. a
training subset), by AutoAttack accuracy; an experiment whose suite had no AutoAttack
ranks by its worst case instead, and the ``ranked_by`` column says so. Each experiment row carries
the noise of its ranking accuracy (:mod:`robench.results.leaderboard.significance`) and
its training cost, and names the seeds of its test against the top row that ran on
different machine kinds. Numbers stay numeric here; :mod:`robench.results.leaderboard.formats`
formats them.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from robench.api.threat import ThreatModel
from robench.evaluation.sequential import WORST_CASE
from robench.results.labels import AUTOATTACK, CLEAN, defense_label, ranking_rule, threat_label
from robench.results.leaderboard.external import EXTERNAL, ExternalRow
from robench.results.leaderboard.reference import ReportedRow
from robench.results.leaderboard.significance import (
    ALPHA,
    binomial_se,
    crossed_machines,
    holm,
    paired_t_pvalue,
    t_interval,
)
from robench.results.records import RunRecord, machine_kind

UNRELIABLE = "⚠ potentially unreliable"
#: marks a test against the top row whose paired seeds ran on different machine kinds
CROSSED_MACHINES = "†"
#: why a row has no test against the top row although they share seeds: the paired
#: differences are all equal, and a t-test needs their spread
NO_SPREAD = "no spread"
#: the columns that identify an experiment
EXPERIMENT = ["dataset", "threat", "defense", "arch", "config"]


def flags(rec: RunRecord) -> list[str]:
    found = rec.eval.get("flags") or []
    return [str(f) for f in found] if isinstance(found, list) else [str(found)]


def checkpoint_label(rec: RunRecord) -> str:
    """``best``, or ``best (eval report)`` where a ``robench eval`` report evaluated it
    (:mod:`robench.results.leaderboard.evaluations`)."""
    return f"{rec.selected} (eval report)" if rec.eval.get("report") else rec.selected


def run_machine(rec: RunRecord) -> str | None:
    """The machine kind behind a run's shown accuracies: where it trained, and for a run
    completed by an evaluation report also where that evaluated, since attacks too give
    other numbers on other hardware. None where any of them is not said."""
    trained = machine_kind(rec)
    if not rec.eval.get("report"):
        return trained
    evaluated = rec.eval.get("report_machine")
    if trained is None or not isinstance(evaluated, str):
        return None
    return trained if evaluated == trained else f"{trained}; evaluated on {evaluated}"


def machines_by_seed(runs: pd.DataFrame) -> dict[int, frozenset[str]]:
    """Seed -> the machine kinds its runs in ``runs`` (a :func:`runs_frame`) name; empty
    where none names one."""
    return {int(seed): frozenset(k for k in kinds if isinstance(k, str))
            for seed, kinds in runs.groupby("seed")["_machine"]}


def _data_settings(rec: RunRecord) -> dict[str, object]:
    return (rec.config or {}).get("data") or {}


def differing_data(records: Iterable[RunRecord]) -> list[str]:
    """The ``data`` settings whose values differ between these records (a key a record
    lacks counts as null), so that a board can say which rows saw other data, e.g. a
    training subset, without knowing any dataset's options."""
    settings = [_data_settings(r) for r in records]
    keys = sorted({k for s in settings for k in s} - {"name"})
    return [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]


def data_label(rec: RunRecord, keys: Sequence[str]) -> str:
    """``train_subset=10000``: this record's non-null values of the differing ``keys``."""
    data = _data_settings(rec)
    return ", ".join(f"{k}={data[k]}" for k in keys if data.get(k) is not None)


def data_settings(records: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """The records split by the data they trained on: (label, records) per setting of
    the ``data`` keys that differ, the dataset's defaults (label "") first. Rows on
    different data are no like-for-like comparison, so a board ranks and tests each
    setting on its own; what a defense brings along (extra data of its own) is part of
    its config, not of a data setting, and stays in its setting's table."""
    keys = differing_data(records)
    settings: dict[str, list[RunRecord]] = {}
    for rec in records:
        settings.setdefault(data_label(rec, keys), []).append(rec)
    return sorted(settings.items(), key=lambda setting: setting[0])


def metrics(records: Iterable[RunRecord]) -> list[str]:
    """Accuracy keys in suite order: clean first, the worst case last."""
    found: list[str] = []
    for rec in records:
        for key in rec.accuracy:
            if key not in found and key != WORST_CASE:
                found.append(key)
    if CLEAN in found:
        found.insert(0, found.pop(found.index(CLEAN)))
    return [*found, WORST_CASE]


def _lower(names: Iterable[str]) -> set[str]:
    return {n.strip().lower() for n in names}


@dataclass(frozen=True)
class Filters:
    """Keep what matches one of the given names per field (empty: keep all); case-insensitive.
    A threat matches as ``linf-8_255``, ``Linf 8/255`` or ``Linf eps=8/255``."""
    data: Sequence[str] = ()
    arch: Sequence[str] = ()
    defense: Sequence[str] = ()
    threat: Sequence[str] = ()

    def _threat_ok(self, norm: str, eps: str) -> bool:
        names = {ThreatModel(norm, eps).slug, f"{norm} {eps}", f"{norm}-{eps}", f"{norm} eps={eps}"}
        return not self.threat or bool(_lower(names) & _lower(self.threat))

    def _ok(self, wanted: Sequence[str], *names: str) -> bool:
        return not wanted or bool(_lower(names) & _lower(wanted))

    def keep(self, rec: RunRecord) -> bool:
        return (self._ok(self.data, rec.dataset) and self._ok(self.arch, rec.arch["name"])
                and self._ok(self.defense, rec.defense["name"], defense_label(rec))
                and self._threat_ok(rec.threat["norm"], str(rec.threat["eps"])))

    def keep_reported(self, row: ReportedRow) -> bool:
        return (self._ok(self.data, row.dataset) and self._ok(self.arch, row.arch)
                and self._ok(self.defense, row.defense) and self._threat_ok(row.norm, row.eps))

    def keep_external(self, row: ExternalRow) -> bool:
        return (self._ok(self.data, row.dataset) and self._ok(self.arch, row.model)
                and self._ok(self.defense, EXTERNAL) and self._threat_ok(row.norm, row.eps))

    def apply(self, records: Iterable[RunRecord]) -> list[RunRecord]:
        return [r for r in records if self.keep(r)]


def train_flops(rec: RunRecord) -> float | None:
    """FLOPs of training per training image, all epochs together (the defense's count)."""
    per_epoch = (rec.cost or {}).get("flops_per_image")
    epochs = rec.train.get("epochs")
    return float(per_epoch) * int(epochs) if per_epoch and isinstance(epochs, int) else None


def train_seconds(rec: RunRecord) -> float | None:
    """Measured training time: the epochs' wall times (validation included), on the record's device."""
    seconds = [s for h in rec.history if isinstance(s := h.get("seconds"), (int, float))]
    return float(sum(seconds)) if seconds and len(seconds) == len(rec.history) else None


def runs_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run with numeric accuracies (NaN where a run's suite lacked an attack)."""
    keys, data_keys = metrics(records), differing_data(records)
    rows = []
    for rec in records:
        rank_key, ranked_by = ranking_rule([rec])
        rows.append({
            "dataset": rec.dataset,
            "threat": threat_label(rec),
            "defense": defense_label(rec),
            "arch": rec.arch["name"],
            "config": rec.config_hash,
            "seed": rec.seed,
            "run_id": rec.run_id,
            "epochs": rec.train.get("epochs"),
            "data": data_label(rec, data_keys),
            "checkpoint": checkpoint_label(rec),
            "flags": len(flags(rec)),
            "ranked_by": ranked_by,
            "_rank": rec.accuracy.get(rank_key),
            "n_test": rec.eval.get("n"),
            "train_flops": train_flops(rec),
            "train_s": train_seconds(rec),
            "_machine": run_machine(rec),
            **{m: rec.accuracy.get(m) for m in keys},
        })
    return pd.DataFrame(rows)


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Ranked within each data setting (the ``data`` column; the defaults first, as in
    :func:`data_settings`). Best first: ranking accuracy, then clean accuracy, then names
    (stable for ties)."""
    by = ["_rank", CLEAN, "defense", "arch", "config", *(["seed"] if "seed" in df else [])]
    ascending = [False, False, True, True, True, *([True] if "seed" in df else [])]
    parts = []
    for _, part in df.groupby("data", sort=True):
        part = part.sort_values(by, ascending=ascending, na_position="last", kind="mergesort")
        part.insert(0, "rank", range(1, len(part) + 1))
        parts.append(part)
    return pd.concat(parts).drop(columns="_rank").reset_index(drop=True)


def run_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """``--by seed``: every run on its own row, ranked within its data setting."""
    return _ordered(runs_frame(records)).drop(columns="_machine") if records else pd.DataFrame()


def _experiment_row(ident: tuple[str, ...], group: pd.DataFrame, keys: Sequence[str]) -> dict[str, object]:
    """Means and stds over seeds; the ranking accuracy's 95% interval and test-set error;
    the cost; and the per-seed ranking accuracies (``_by_seed``) and machine kinds
    (``_machines``) for the paired tests."""
    without_aa = group.loc[group["ranked_by"] != AUTOATTACK, "ranked_by"]
    by_seed = group.groupby("seed")["_rank"].mean().dropna()
    interval = t_interval(list(by_seed))
    n_test = group["n_test"].dropna()
    nan = float("nan")
    row: dict[str, object] = dict(zip(EXPERIMENT, ident))
    row.update(
        seeds=group["seed"].nunique(), epochs=group["epochs"].iloc[0], data=group["data"].iloc[0],
        checkpoint=", ".join(sorted(set(group["checkpoint"]))), flags=int(group["flags"].sum()),
        ranked_by=without_aa.iloc[0] if len(without_aa) else AUTOATTACK,
        _rank=by_seed.mean() if len(by_seed) else nan, _by_seed=dict(by_seed),
        _machines={s: k for s, k in machines_by_seed(group).items() if s in by_seed.index},
    )
    # accuracies lie in [0, 100]; a t-interval of few seeds can reach past them
    row["ci low"], row["ci high"] = (max(0.0, interval[0]), min(100.0, interval[1])) if interval else (nan, nan)
    row["test se"] = binomial_se(by_seed.mean(), int(n_test.min())) if len(by_seed) and len(n_test) else nan
    row["train flops"], row["train s"] = group["train_flops"].mean(), group["train_s"].mean()
    for m in keys:
        values = group[m].dropna()
        row[m] = values.mean() if len(values) else float("nan")
        row[f"{m} std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
    return row


def compare_with_top(df: pd.DataFrame) -> pd.DataFrame:
    """``top``: the top-ranked row of each data setting (the ``data`` column; rows on
    other data are no like-for-like comparison); ``vs top p``: the
    Holm-adjusted p of a paired t-test of each other row's ranking accuracy against its
    top row's over their shared seeds (NaN below 2 shared seeds), Holm over the rows
    compared with the same top; ``tied``: not distinguishable from it at level ALPHA;
    ``vs top untested``: why a row with shared seeds has no test, :data:`NO_SPREAD`
    where its paired differences are all equal (its p is NaN and it is left out of
    Holm's family, which holds the error of the tests that were made); ``vs top
    machines``: the tested seeds whose runs ran on different machine kinds, in words
    ("" where none did or the kinds are not known)."""
    n, by_seed, machines = len(df), list(df["_by_seed"]), list(df["_machines"])
    top, p_values, tied, crossed = [False] * n, [float("nan")] * n, [False] * n, [""] * n
    untested = [""] * n
    for rows in df.groupby("data", sort=False).indices.values():
        first, rest = int(rows[0]), [int(i) for i in rows[1:]]
        top[first] = True
        raw = {i: paired_t_pvalue(by_seed[first], by_seed[i]) for i in rest}
        for i, p in raw.items():
            untested[i] = NO_SPREAD if p is not None and math.isnan(p) else ""
        tested = {i: p for i, p in raw.items() if p is not None and not untested[i]}
        for i, p in zip(tested, holm(list(tested.values()))):
            p_values[i], tied[i] = p, p >= ALPHA
            crossed[i] = crossed_text(crossed_machines(machines[first], machines[i]))
    return (df.assign(top=top, **{"vs top p": p_values}, tied=tied, **{"vs top untested": untested},
                      **{"vs top machines": crossed})
            .drop(columns=["_by_seed", "_machines"]))


def crossed_text(crossed: dict[int, tuple[tuple[str, ...], tuple[str, ...]]], top: str = "top row",
                 other: str = "this row") -> str:
    """``seed 3: top row on A, this row on B; ...`` for :func:`crossed_machines`' seeds."""
    return "; ".join(f"seed {seed}: {top} on {' and '.join(mine)}, {other} on {' and '.join(theirs)}"
                     for seed, (mine, theirs) in crossed.items())


def experiment_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per experiment, ranked within its data setting: ``<metric>`` is the mean
    over seeds and ``<metric> std`` the sample standard deviation (NaN for one seed);
    ``ci low``/``ci high`` the 95% t-interval of the ranking accuracy over seeds, ``test
    se`` its binomial standard error on the test set, ``vs top p``, ``tied``, ``vs top
    untested`` and ``vs top machines`` the comparison with its setting's top row."""
    if not records:
        return pd.DataFrame()
    runs = runs_frame(records)
    keys = metrics(records)
    rows = [_experiment_row(ident, group, keys) for ident, group in runs.groupby(EXPERIMENT, sort=True)]
    return compare_with_top(_ordered(pd.DataFrame(rows)))
