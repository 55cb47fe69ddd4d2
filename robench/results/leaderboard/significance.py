"""How far a board's numbers can be trusted: intervals over seeds, the test set's own
sampling error, and whether a row is distinguishable from the top-ranked one.

Two sources of noise are kept apart. Seeds vary the training (initialisation, batch
order, attack starts); their spread gives the t-interval and the paired test below. The
test set is one finite sample of images; its binomial standard error says how much the
accuracy of one model would move on another sample of the same size. The paired test
compares rows on the same test images, so it answers "does this row beat that one on
this test set over training seeds", not "on any test set". The same pairing decides
whether a cheaper variant of a method is non-inferior to it (:func:`noninferiority`).
Pairing removes only what runs of one seed share; where they ran on different machine
kinds, :func:`crossed_machines` names the seeds.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

#: the level of the intervals (95%) and of the tests against the top row
ALPHA = 0.05


def t_interval(values: Sequence[float], alpha: float = ALPHA) -> tuple[float, float] | None:
    """The (1 - alpha) Student-t interval of the mean over seeds; None below 2 seeds."""
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def binomial_se(accuracy_percent: float, n_points: int) -> float:
    """Standard error, in points, of an accuracy measured on ``n_points`` test images."""
    p = min(max(accuracy_percent / 100, 0.0), 1.0)
    return 100 * math.sqrt(p * (1 - p) / n_points)


#: paired differences whose spread is at most this fraction of the accuracies compared
#: (or of 1 point) are all equal: what is left is rounding
ROUNDING = 1e-9


def _rounding(a: Mapping[int, float], b: Mapping[int, float], seeds: Sequence[int]) -> float:
    """The spread of paired differences that is rounding alone (:data:`ROUNDING`)."""
    return ROUNDING * max(1.0, *(abs(a[s]) for s in seeds), *(abs(b[s]) for s in seeds))


def paired_t_pvalue(top: Mapping[int, float], other: Mapping[int, float]) -> float | None:
    """Two-sided paired t-test over the seeds both rows have; None below 2 shared seeds.

    Pairing by seed removes what runs of the same seed share (the initial weights of
    one architecture and the data order come from the seed). The t statistic divides
    the mean difference by its spread over seeds, so differences that are all equal
    cannot be tested: p is NaN then (a board says "cannot be tested"), not 0, which
    would call two rows distinguishable from as few as two seeds. All-zero differences
    (identical rows) are tied: p is 1. Equal is up to rounding (:data:`ROUNDING`):
    accuracies are fractions of test points, and rows that differ by the same number
    of points on every seed leave last-bit differences (a spread of 1e-14 points)
    that the statistic would blow up to p = 1e-30."""
    seeds = sorted(set(top) & set(other))
    if len(seeds) < 2:
        return None
    diffs = [top[s] - other[s] for s in seeds]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    rounding = _rounding(top, other, seeds)
    if sd <= rounding:
        return 1.0 if abs(mean) <= rounding else math.nan
    t = mean / (sd / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


def crossed_machines(top: Mapping[int, Collection[str]], other: Mapping[int, Collection[str]],
                     ) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The seeds both rows have whose runs did not all run on one machine kind: seed ->
    (the first row's kinds, the other row's), each sorted; the values are the kinds the
    runs name (:func:`robench.results.records.machine_kind`).

    The same seed and config can give other numbers on another CPU or GPU kind (other
    vector units, other kernels), which pairing by seed does not remove: a paired test
    over such seeds counts that difference as the rows' own. A seed where either row's
    runs name no kind (records from before robench recorded the machine) is left out,
    since whether they differ cannot be known."""
    crossed = {}
    for seed in sorted(set(top) & set(other)):
        mine, theirs = tuple(sorted(set(top[seed]))), tuple(sorted(set(other[seed])))
        if mine and theirs and len({*mine, *theirs}) > 1:
            crossed[seed] = (mine, theirs)
    return crossed


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order: a
    row is distinguishable from the top when its adjusted p is below ALPHA, with the
    family-wise error of all comparisons on the board held at ALPHA."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class NonInferiority:
    """Whether a variant is at most ``margin`` points worse than a base, paired over seeds."""

    seeds: tuple[int, ...]
    #: variant minus base, per seed
    differences: tuple[float, ...]
    mean: float
    #: the one-sided (1 - alpha) lower confidence bound of the mean difference
    lower: float
    margin: float
    #: one-sided p of "the variant is worse by the margin or more"; NaN when the
    #: differences are all equal (no spread: no test, the mean decides)
    p: float

    @property
    def noninferior(self) -> bool:
        """The lower bound lies above -margin: worse by less than the margin, at level alpha."""
        return self.lower > -self.margin


def noninferiority(base: Mapping[int, float], variant: Mapping[int, float], margin: float,
                   alpha: float = ALPHA) -> NonInferiority | None:
    """A paired one-sided t-test of the mean difference (variant - base) against
    -``margin`` over the seeds both have; None below 2 shared seeds.

    A small mean loss is not enough: with few seeds the bound is wide, and the variant
    is called non-inferior only when the bound itself clears the margin."""
    seeds = tuple(sorted(set(base) & set(variant)))
    if len(seeds) < 2:
        return None
    diffs = tuple(variant[s] - base[s] for s in seeds)
    mean, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs)
    if sd <= _rounding(base, variant, seeds):  # no spread: the mean decides, and no p can be given
        lower, p = mean, math.nan
    else:
        se = sd / math.sqrt(n)
        lower = mean - float(stats.t.ppf(1 - alpha, n - 1)) * se
        p = float(stats.t.sf((mean + margin) / se, n - 1))
    return NonInferiority(seeds, diffs, mean, lower, margin, p)
