"""Plain training steps written the way the official repositories write them.

These are the baselines robench's speed is measured against (``robench bench``,
``benchmarks/*.py``): fp32, eager, the attack's gradients through ``loss.backward()``
with the weights left trainable (so every attack step also computes weight gradients,
later zeroed), and TRADES and MART recomputing the clean prediction wherever the
official code does. They follow the official settings of shared facts (PGD-AT of Rice
et al. / Bag of Tricks; yaodongyu/TRADES; YisenWang/MART): BN in eval mode during the
attack, uniform or 0.001-Gaussian starts, sign steps, projection then clamp to [0, 1].

Each function does one full training step on (x, y) and returns the loss. Nothing here
is used by robench itself.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def _descend(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], Tensor]) -> Tensor:
    """The outer step every official script ends with: train mode, zero_grad, backward, step."""
    model.train()
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss.detach()


def standard_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, **_: float) -> Tensor:
    return _descend(model, opt, lambda: F.cross_entropy(model(x), y))


def pgd_at_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
                eps: float, steps: int = 10, **_: float) -> Tensor:
    alpha = 2.5 * eps / steps
    model.eval()
    x_adv = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()  # as written officially: weight gradients too, discarded below
        x_adv = _project(x_adv.detach() + alpha * x_adv.grad.sign(), x, eps)
    return _descend(model, opt, lambda: F.cross_entropy(model(x_adv), y))


def trades_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
                eps: float, steps: int = 10, beta: float = 6.0, **_: float) -> Tensor:
    alpha = eps * 0.007 / 0.031
    kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss_kl = kl(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1))  # clean pass at every step
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return _descend(model, opt, lambda: F.cross_entropy(model(x), y) + beta * (1.0 / len(x)) * kl(
        F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1)))  # a second clean forward, as officially


def mart_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
              eps: float, steps: int = 10, beta: float = 6.0, **_: float) -> Tensor:
    alpha = eps * 0.007 / 0.031
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return _descend(model, opt, lambda: _mart_loss(model, x, x_adv, y, beta))


def _mart_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    logits, logits_adv = model(x), model(x_adv)
    adv_probs = F.softmax(logits_adv, 1)
    tmp1 = torch.argsort(adv_probs, 1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, 1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1).long()).squeeze()
    loss_robust = (1.0 / len(x)) * torch.sum(
        torch.sum(nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs), 1) * (1.0000001 - true_probs))
    return loss_adv + beta * loss_robust


#: robench defense name -> the reference step it is compared with
REFERENCE_STEPS = {"standard": standard_step, "pgd-at": pgd_at_step, "trades": trades_step, "mart": mart_step}
