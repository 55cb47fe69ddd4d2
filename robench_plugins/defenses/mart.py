"""MART (Wang et al., ICLR 2020; github.com/YisenWang/MART).

Misclassification-aware adversarial training: a boosted cross-entropy on the adversary
(it also pushes down the strongest wrong class) plus a KL term weighted by how badly the
clean point is classified, because the authors found that misclassified examples
matter most for robustness. The settings and the numerical constants are the official
code's (github.com/YisenWang/MART, mart.py) so that results compare with published ones;
the attack shares TRADES' start and step size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import AdversarialDefense, LossOutput
from robench.api.params import param
from robench.api.perturb import attack_mode, cross_entropy_loss, pgd
from robench.api.threat import ThreatModel
from robench_plugins.defenses.pgd_at import attack_passes
from robench_plugins.defenses.trades import InnerMaxParams, gaussian_start, official_step_size

# The official code's constants: they keep the logs finite and give correctly
# classified points (p_y near 1) a small but nonzero KL weight.
BOOST_ONE = 1.0001  # in log(BOOST_ONE - p(x') + LOG_EPS), the wrong-class margin term
LOG_EPS = 1e-12
WEIGHT_ONE = 1.0000001  # the KL weight of point i is WEIGHT_ONE - p_y(x_i)


@dataclass(frozen=True)
class MARTParams(InnerMaxParams):
    beta: float = param(6.0, ge=0, help="weight of the misclassification-aware KL term")


class MART(AdversarialDefense[MARTParams]):
    Params = MARTParams

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """Maximise CE by PGD from a Gaussian start (eval-mode BN, frozen weights)."""
        p = self.params
        with attack_mode(model):
            step = p.step_size or official_step_size(threat.value)
            start = gaussian_start(x, p.start_std)
            return pgd(model, x, threat, cross_entropy_loss(y), steps=p.steps, step_size=step, start=start)

    def forward_passes_per_image(self) -> float:
        return attack_passes(self.params.steps) + 6.0  # train-mode passes on x and x', with backward

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        """Boosted CE on x' plus beta * KL(p(x) || p(x')) weighted by 1 - p_y(x)."""
        p = self.params
        # fp32 under autocast: in bf16, 1.0001 - p rounds to 1 - p, which is 0 for a confident p
        logits, logits_adv = model(x).float(), model(x_adv).float()
        adv_probs = F.softmax(logits_adv, 1)
        top2 = adv_probs.argsort(1)[:, -2:]
        wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # strongest wrong class
        wrong_margin = F.nll_loss(torch.log(BOOST_ONE - adv_probs + LOG_EPS), wrong)
        boosted = F.cross_entropy(logits_adv, y) + wrong_margin
        nat_probs = F.softmax(logits, 1)
        weight = WEIGHT_ONE - nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = F.kl_div(torch.log(adv_probs + LOG_EPS), nat_probs, reduction="none").sum(1)
        return LossOutput(boosted + p.beta * (kl * weight).sum() / len(x), logits_adv)
