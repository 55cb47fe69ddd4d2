"""Threat models with exact budgets.

``eps`` is kept as the string the user wrote ("8/255", "0.3") because 8/255 is not
0.031 and published comparisons hinge on that difference; ``value`` is the float the
attacks use.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from robench.api.errors import ConfigError

NORMS: tuple[str, ...] = ("Linf", "L2")


def parse_fraction(text: str | float | int) -> Fraction:
    """Parse "8/255", "0.3" or a number exactly, without ``eval``."""
    if isinstance(text, bool):
        raise ConfigError(f"expected a number or a fraction like 8/255, got {text!r}")
    if isinstance(text, (int, float)):
        return Fraction(str(text))
    try:
        return Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"expected a number or a fraction like 8/255, got {text!r}") from None


def normalize_norm(norm: str) -> str:
    for known in NORMS:
        if str(norm).strip().lower() == known.lower():
            return known
    raise ConfigError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each input, intersected with the [0,1] box.

    eps 0 is allowed (the clean point of an eps sweep, a sanity check); a run's threat
    model must have eps > 0, which :func:`robench.workflows.plans.plan_run` enforces.
    """

    norm: str
    eps: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", normalize_norm(self.norm))
        frac = parse_fraction(self.eps)
        if self.norm == "Linf" and not 0 <= frac <= 1:
            raise ConfigError(f"eps must lie in [0, 1] for Linf, got {self.eps}")
        if frac < 0:
            raise ConfigError(f"eps must be >= 0, got {self.eps}")
        object.__setattr__(self, "eps", str(self.eps).strip())

    @property
    def value(self) -> float:
        return float(parse_fraction(self.eps))

    def scaled(self, factor: Fraction | int) -> ThreatModel:
        """The same norm with ``factor`` times the budget, still exact (2 * 8/255 -> 16/255)."""
        return ThreatModel(self.norm, str(parse_fraction(self.eps) * Fraction(factor)))

    @property
    def slug(self) -> str:
        """File-system name, e.g. ``linf-8_255`` (``/`` becomes ``_``)."""
        return f"{self.norm.lower()}-{self.eps.replace('/', '_')}"

    def __str__(self) -> str:
        return f"{self.norm} eps={self.eps}"
