"""AutoAttack (Croce & Hein, ICML 2020) through the PyPI package ``pyautoattack``.

``autoattack`` runs a version ("standard": APGD-CE, APGD-T, FAB-T, Square, each on the
points still robust) or a custom subset; ``apgd-ce`` and ``apgd-t`` run one of its
attacks alone. AutoAttack's seed defaults to the time, so robench always passes one.
Its sanity checks (randomness, softmax output, zero gradients, dynamic defence, too
few classes) are logged as warnings on the ``auto-attack`` logger; they are collected
in :attr:`AutoAttackSuite.warnings` for the evaluation to record.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from robench.api import Attack
from robench.errors import ConfigError
from robench.params import param
from robench.perturb import attack_mode, project
from robench.threat import ThreatModel

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@dataclass(frozen=True)
class AutoAttackParams:
    version: Literal["standard", "plus", "rand", "custom"] = param("standard", help="AutoAttack version")
    attacks: tuple[str, ...] = param((), help=f"for version custom: a subset of {', '.join(AA_ATTACKS)}")
    seed: int = param(0, ge=0, help="AutoAttack's seed (its own default is the time)")
    batch_size: int = param(500, ge=1, help="AutoAttack's internal batch size")


@dataclass(frozen=True)
class SingleAttackParams:
    seed: int = param(0, ge=0, help="AutoAttack's seed (its own default is the time)")
    batch_size: int = param(500, ge=1)


class AutoAttackSuite(Attack):
    Params = AutoAttackParams

    def __init__(self, params: object | None = None) -> None:
        super().__init__(params)
        self.warnings: list[str] = []
        version, attacks = self._version_and_attacks()
        unknown = [a for a in attacks if a not in AA_ATTACKS]
        if unknown:
            raise ConfigError(f"attack.attacks: unknown {unknown}; choose from {', '.join(AA_ATTACKS)}")
        if (version == "custom") != bool(attacks):
            raise ConfigError("attack.attacks: give a list exactly when attack.version is custom")

    def _version_and_attacks(self) -> tuple[str, tuple[str, ...]]:
        return self.params.version, tuple(self.params.attacks)

    def label(self) -> str:
        version, attacks = self._version_and_attacks()
        if version == "standard":
            return "AutoAttack"
        return f"AutoAttack-{version}" if version != "custom" else "+".join(a.upper() for a in attacks)

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        from pyautoattack import AutoAttack

        version, attacks = self._version_and_attacks()
        collect = _Collect()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(collect)
        try:
            with attack_mode(model):  # eval + frozen weights: FAB's backward computes no weight grads
                runner = AutoAttack(
                    model, attacks=list(attacks) or None, device=x.device, eps=threat.value,
                    norm=threat.norm, seed=self.params.seed, version=version,
                )
                x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=self.params.batch_size)
        finally:
            logger.removeHandler(collect)
        self.warnings.extend(m for m in collect.messages if m not in self.warnings)
        return project(x_adv.to(x.device, x.dtype), x, threat)  # float-exact inside the ball


class APGDCE(AutoAttackSuite):
    """APGD with cross-entropy alone (100 iterations)."""

    Params = SingleAttackParams

    def _version_and_attacks(self) -> tuple[str, tuple[str, ...]]:
        return "custom", ("apgd-ce",)


class APGDT(AutoAttackSuite):
    """Targeted APGD on the DLR loss alone (9 target classes)."""

    Params = SingleAttackParams

    def _version_and_attacks(self) -> tuple[str, tuple[str, ...]]:
        return "custom", ("apgd-t",)
