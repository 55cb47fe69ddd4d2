"""PGD adversarial training (Madry et al., ICLR 2018): minimise CE on PGD adversaries.

Defaults follow Rice et al. (ICML 2020, arXiv 2002.11569) and Bag of Tricks for AT
(Pang et al., ICLR 2021, arXiv 2010.00467): CE inner loss, uniform random start in the eps-ball, 10 steps of
2.5*eps/10 (= 2/255 at 8/255), BN in eval mode during the attack.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import AdversarialDefense, LossOutput
from robench.api.params import param
from robench.api.perturb import attack_mode, cross_entropy_loss, default_step_size, pgd, random_start
from robench.api.threat import ThreatModel


@dataclass(frozen=True)
class PGDATParams:
    steps: int = param(10, ge=1, help="attack steps per training batch")
    step_size: float | None = param(None, gt=0, help="null: 2.5 * eps / steps")
    random_start: bool = param(True, help="start from a uniform draw in the eps-ball")


def attack_passes(steps: int) -> float:
    """An attack step with frozen weights: a forward pass and an input gradient (2F)."""
    return 2.0 * steps


def pgd_adversary(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, p: PGDATParams) -> Tensor:
    """PGD on the cross-entropy from a random start, eval-mode BN and frozen weights
    (the inner maximisation of PGD-AT, which UAD-AT shares)."""
    step = p.step_size or default_step_size(threat.value, p.steps)
    with attack_mode(model):
        start = random_start(x, threat) if p.random_start else x
        return pgd(model, x, threat, cross_entropy_loss(y), steps=p.steps, step_size=step, start=start)


class PGDAT(AdversarialDefense[PGDATParams]):
    Params = PGDATParams

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        return pgd_adversary(model, x, y, threat, self.params)

    def forward_passes_per_image(self) -> float:
        return attack_passes(self.params.steps) + 3.0  # the training step on x'

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        """The outer loss given the adversaries, with the model in train mode as called."""
        logits = model(x_adv)
        return LossOutput(F.cross_entropy(logits, y), logits)
