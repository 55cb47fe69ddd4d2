"""Fast adversarial training: FGSM from a random start (Wong, Rice & Kolter, ICLR 2020).

"Fast is better than free: Revisiting adversarial training", arXiv 2001.03994. One
gradient step per batch instead of PGD-AT's ten:

    delta ~ U(-eps, eps)^d, with x + delta clamped to [0, 1]
    delta <- delta + alpha * sign(grad_delta CE(f(x + delta), y)),   alpha = 1.25 * eps
    delta <- clamp(delta, -eps, eps), then x + delta clamped to [0, 1]
    minimise CE(f(x + delta), y)

With the random start the paper finds FGSM training about as effective as PGD-AT at
a fraction of the cost. Without it (plain FGSM-AT: ``random_start=false, alpha=1``)
and with steps much larger than 1.25 * eps, training is prone to "catastrophic
overfitting": robustness to PGD collapsing within an epoch. Under an L2 threat the
same code takes a normalised-gradient step (FGM) from a random point of the L2 ball.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import AdversarialDefense, LossOutput
from robench.api.params import param
from robench.api.perturb import attack_mode, cross_entropy_loss, pgd, random_start
from robench.api.threat import ThreatModel


@dataclass(frozen=True)
class FastAtParams:
    alpha: float = param(1.25, gt=0, help="FGSM step size in units of eps (Wong et al.: 1.25, i.e. 10/255 at 8/255)")
    random_start: bool = param(True, help="start from a uniform draw in the eps-ball (false: plain FGSM-AT)")


class FastAt(AdversarialDefense[FastAtParams]):
    Params = FastAtParams
    api_version = "1.3"

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """The inner maximisation: one FGSM step, inside ``threat`` and the [0, 1] box.

        ``threat`` is the one robench passes for this step (smaller than the run's during
        ``train.eps_warmup_epochs``), so the step scales with it.
        """
        p = self.params
        with attack_mode(model):  # eval-mode BN, frozen weights; restored on exit
            start = random_start(x, threat) if p.random_start else x
            # one step of robench's PGD loop = FGSM; it projects onto the ball and the box
            # and scales the attack loss under fp16 training
            return pgd(model, x, threat, cross_entropy_loss(y), steps=1, step_size=p.alpha * threat.value, start=start)

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        """The outer loss given the adversaries; the model is in train mode, as robench called it."""
        logits = model(x_adv)
        return LossOutput(F.cross_entropy(logits, y), logits)

    def forward_passes_per_image(self) -> float:
        """One attack step (a forward and an input gradient, 2F) and the training step (3F)."""
        return 5.0
