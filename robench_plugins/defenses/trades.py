"""TRADES (Zhang et al., ICML 2019; github.com/yaodongyu/TRADES).

Clean CE plus beta * KL(clean prediction || adversarial one): TRADES trades accuracy
for smoothness instead of fitting labels on adversaries. Published numbers depend on
the official code's settings (trades.py in that repository), so they are kept: the
attack starts at x plus tiny Gaussian noise (at x the KL and its gradient vanish),
steps 0.007 at eps 0.031, and the outer loss differentiates through both predictions.

The official attack recomputes the clean softmax at every step. With BN in eval mode
and frozen weights that softmax does not change during the attack, so ``cache_clean``
computes it once per batch: the same adversaries, ``steps`` fewer forward passes.

The official outer loss makes three train-mode forward passes: x for the CE, x', and x
again for the KL target. On a network without dropout the third pass repeats the
first's output, so loss and gradients are the same with two passes; only BatchNorm's
running statistics see x twice. With dropout (``trades-smallcnn``) the third pass draws
a fresh mask, which changes the objective. ``recompute_target`` (default on) keeps the
official three passes, so that a TRADES row is the official method; off saves one
forward and backward pass per image (30F to 27F).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import AdversarialDefense, LossOutput
from robench.api.params import param
from robench.api.perturb import attack_mode, pgd
from robench.api.threat import ThreatModel
from robench_plugins.defenses.pgd_at import attack_passes


def official_step_size(eps: float) -> float:
    """The official TRADES/MART step, 0.007 at eps 0.031, scaled with eps."""
    return eps * 0.007 / 0.031


def gaussian_start(x: Tensor, std: float) -> Tensor:
    """x + std * N(0, 1) from the global RNG, neither projected nor clamped (as officially)."""
    return x + std * torch.randn(x.shape, device=x.device, dtype=x.dtype)


def full_precision(x: Tensor) -> torch.autocast:
    """Autocast off (fp32) inside, whatever the training precision outside."""
    return torch.autocast(x.device.type, enabled=False)


@dataclass(frozen=True)
class InnerMaxParams:
    """The attack settings of the official TRADES code, which MART reuses."""

    steps: int = param(10, ge=1, help="attack steps per training batch")
    step_size: float | None = param(None, gt=0, help="null: eps * 0.007 / 0.031")
    start_std: float = param(0.001, ge=0, help="std of the Gaussian start around x")


@dataclass(frozen=True)
class TRADESParams(InnerMaxParams):
    beta: float = param(6.0, ge=0, help="weight of the KL term: robustness against accuracy")
    cache_clean: bool = param(True, help="compute the clean softmax once per batch, not per step")
    recompute_target: bool = param(
        True, help="the official outer loss: the KL target p(x) from a third train-mode pass (fresh dropout mask); "
                   "false reuses the CE pass (one forward and backward fewer)")


class TRADES(AdversarialDefense[TRADESParams]):
    Params = TRADESParams

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """Maximise the summed KL(p(x) || p(x')) by PGD (eval-mode BN, frozen weights)."""
        p = self.params
        with attack_mode(model):
            clean: Tensor | None = None
            if p.cache_clean:
                with torch.no_grad(), full_precision(x):
                    clean = F.softmax(model(x).float(), 1)

            def kl_from_clean(logits: Tensor) -> Tensor:
                target = clean if clean is not None else F.softmax(model(x).float(), 1)
                return F.kl_div(F.log_softmax(logits.float(), 1), target, reduction="sum")

            step = p.step_size or official_step_size(threat.value)
            start = gaussian_start(x, p.start_std)
            # 0.001 from x, bf16 or fp16 round p(x') to p(x): the KL and its gradient are
            # exactly zero and the attack never leaves its start. The first step is fp32.
            with full_precision(x):
                first = pgd(model, x, threat, kl_from_clean, steps=min(1, p.steps), step_size=step, start=start)
            return pgd(model, x, threat, kl_from_clean, steps=p.steps - 1, step_size=step, start=first)

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        """CE(f(x), y) + beta * mean KL(p(x) || p(x')), differentiated through both."""
        p = self.params
        logits, logits_adv = model(x).float(), model(x_adv).float()  # softmax and log in fp32 under autocast
        target = model(x).float() if p.recompute_target else logits  # the official order: x, x', x
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(target, 1), reduction="sum")
        return LossOutput(F.cross_entropy(logits, y) + p.beta * kl / len(x), logits_adv)

    def forward_passes_per_image(self) -> float:
        p = self.params
        attack = (1.0 + attack_passes(p.steps)) if p.cache_clean else 3.0 * p.steps  # per step: p(x) again
        return attack + (9.0 if p.recompute_target else 6.0)  # train-mode passes, each with its backward
