"""The evaluation protocol shared by ``robench run`` (its last stage) and ``robench eval``.

Clean accuracy, then the configured attack suite in order on the points still robust
(:mod:`robench.evaluation.sequential`), robench's gradient-masking checks and, on request,
an accuracy-versus-eps sweep (:mod:`robench.evaluation.checks`). Every reliability
warning (AutoAttack's sanity checks, a failed robench check) becomes a flag; a result
with any flag is "potentially unreliable" in the leaderboard.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench.api.contracts import Attack, TensorSplit
from robench.api.errors import ConfigError
from robench.api.params import params_to_dict
from robench.api.threat import ThreatModel
from robench.core.config import SUITE_KIND, SUITE_SECTION, EvalConfig, PluginChoice
from robench.core.progress import NullReporter, Reporter
from robench.core.registry import get_registry
from robench.evaluation.checks import CheckResult, SweepPoint, eps_sweep, sanity_checks, sweep_label
from robench.evaluation.sequential import EvalResult, evaluate

PROTOCOL = "sequential: each attack runs on the points still robust; the last column is the worst case"


@dataclass(frozen=True)
class SuiteEntry:
    attack: Attack
    name: str
    params: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"label": self.attack.label(), "name": self.name, **self.params}


def create_suite(choices: Sequence[PluginChoice]) -> list[SuiteEntry]:
    """Build every attack of the suite (bad names and params fail here, before any work)."""
    registry = get_registry(SUITE_KIND)
    suite = []
    for i, choice in enumerate(choices):
        where = f"{SUITE_SECTION}[{i}] ({choice.name})"
        attack = registry.create(choice.name, choice.params, where=where)
        assert isinstance(attack, Attack)
        suite.append(SuiteEntry(attack, registry.canonical_name(choice.name), params_to_dict(attack.params)))
    labels = [entry.attack.label() for entry in suite]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"{SUITE_SECTION}: {', '.join(twice)} appears more than once in the suite")
    return suite


@dataclass(frozen=True)
class ProtocolResult:
    result: EvalResult
    checks: list[CheckResult]
    sweep: list[SweepPoint] | None
    sweep_n: int

    @property
    def flags(self) -> list[str]:
        return self.result.flags + [f"robench check {c.name} failed: {c.detail}" for c in self.checks if not c.passed]

    def record_section(self, suite: Sequence[SuiteEntry], split: str = "test") -> dict[str, Any]:
        """The ``eval`` section of a record or report."""
        return {
            "split": split,
            "n": self.result.n,
            "protocol": PROTOCOL,
            "attacks": [entry.describe() for entry in suite],
            "flags": self.flags,
            "reliable": not self.flags,
            "checks": [c.as_dict() for c in self.checks],
            "eps_sweep": None if self.sweep is None else {
                "attack": sweep_label(),
                "n": self.sweep_n,
                "points": [p.as_dict() for p in self.sweep],
            },
        }


def run_protocol(
    model: nn.Module,
    split: TensorSplit,
    suite: Sequence[SuiteEntry],
    threat: ThreatModel,
    cfg: EvalConfig,
    *,
    device: torch.device,
    seed: int,
    reporter: Reporter | None = None,
    state_dir: Path | None = None,
) -> ProtocolResult:
    reporter = reporter or NullReporter()
    result = evaluate(
        model, split, [entry.attack for entry in suite], threat,
        batch_size=cfg.batch_size, device=device, seed=seed, n_eval=cfg.n_eval,
        reporter=reporter, state_dir=state_dir,
    )
    assert result.indices is not None
    checks: list[CheckResult] = []
    if cfg.checks:
        checks = sanity_checks(
            model, split, result.indices[: cfg.check_n], threat,
            batch_size=cfg.batch_size, device=device, seed=seed, reporter=reporter,
        )
    sweep = None
    if cfg.eps_sweep:
        sweep = eps_sweep(
            model, split, result.indices, threat, eps_values=list(cfg.sweep_eps) or None,
            batch_size=cfg.batch_size, device=device, seed=seed, reporter=reporter,
        )
    return ProtocolResult(result, checks, sweep, result.n)


def check_sweep(cfg: EvalConfig, threat: ThreatModel) -> None:
    """Fail at planning time, not after the suite ran, on a bad ``eval.sweep_eps``."""
    for eps in cfg.sweep_eps:
        try:
            ThreatModel(threat.norm, eps)
        except ConfigError as exc:
            raise ConfigError(f"eval.sweep_eps: {exc}") from None
