"""FGSM (Goodfellow et al., 2015): one gradient step of the full budget, from x.

The weakest attack of the suite; a model that resists FGSM but not PGD is the classic
sign of gradient masking.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from robench.api import Attack
from robench.api.perturb import attack_mode, cross_entropy_loss, pgd
from robench.api.threat import ThreatModel


class FGSM(Attack):
    def label(self) -> str:
        return "FGSM"

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        with attack_mode(model):
            return pgd(model, x, threat, cross_entropy_loss(y), steps=1, step_size=threat.value)
