"""CW-Linf: PGD on the Carlini-Wagner margin loss (Carlini & Wagner, 2017; Madry et al.).

The margin max_{j != y} z_j - z_y does not saturate like cross-entropy does, so it
breaks points that CE-based PGD misses on over-confident models.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.api import Attack
from robench.params import param
from robench.perturb import attack_mode, default_step_size, pgd, random_start
from robench.threat import ThreatModel


def margin_loss(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Summed CW margin: the best wrong logit minus the true logit (to maximise)."""
    def loss(logits: Tensor) -> Tensor:
        true = logits.gather(1, y[:, None]).squeeze(1)
        wrong = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        return (wrong.max(1).values - true).sum()
    return loss


@dataclass(frozen=True)
class CWParams:
    steps: int = param(20, ge=1, help="ascent steps")
    step_size: float | None = param(None, gt=0, help="null: 2.5 * eps / steps")
    random_start: bool = param(True, help="start from a uniform draw in the eps-ball")


class CW(Attack):
    Params = CWParams

    def label(self) -> str:
        return f"CW-{self.params.steps}"

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        p: CWParams = self.params  # type: ignore[assignment]
        step = p.step_size or default_step_size(threat.value, p.steps)
        with attack_mode(model):
            start = random_start(x, threat, generator) if p.random_start else x
            return pgd(model, x, threat, margin_loss(y), steps=p.steps, step_size=step, start=start)
