"""PGD (Madry et al.): projected steepest ascent on cross-entropy, with random restarts.

Runs with the model in eval mode and parameters frozen (restored afterwards); a
restart only replaces points that the previous ones failed to break.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.api import Attack
from robench.api.params import param
from robench.api.perturb import attack_mode, cross_entropy_loss, default_step_size, pgd, random_start
from robench.api.threat import ThreatModel


@dataclass(frozen=True)
class PGDParams:
    steps: int = param(20, ge=1, help="ascent steps")
    step_size: float | None = param(None, gt=0, help="null: 2.5 * eps / steps")
    random_start: bool = param(True, help="start from a uniform draw in the eps-ball")
    restarts: int = param(1, ge=1, help="independent starts; the first success counts")


class PGD(Attack[PGDParams]):
    Params = PGDParams
    count_param = "steps"  # pgd-20, pgd-100

    name: str = "PGD"

    def label(self) -> str:
        p = self.params
        return f"{self.name}-{p.steps}" + (f"x{p.restarts}" if p.restarts > 1 else "")

    def inner_loss(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        """The loss the attack maximises; subclasses (CW) swap it."""
        return cross_entropy_loss(y)

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        p = self.params
        step = p.step_size or default_step_size(threat.value, p.steps)
        with attack_mode(model):
            best = x.detach().clone()
            todo = torch.ones(len(y), dtype=torch.bool, device=x.device)
            for _ in range(p.restarts):
                xs, ys = x[todo], y[todo]
                start = random_start(xs, threat, generator) if p.random_start else xs
                x_adv = pgd(model, xs, threat, self.inner_loss(ys), steps=p.steps, step_size=step, start=start)
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != ys
                idx = todo.nonzero().squeeze(1)
                best[idx] = x_adv  # keep the last try for points never fooled
                todo[idx[fooled]] = False
                if not todo.any():
                    break
        return best
