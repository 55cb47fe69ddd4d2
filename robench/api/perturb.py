"""Building blocks for attacks and for defenses' inner maximisation.

Generic over the loss being maximised, so PGD-AT (cross-entropy), TRADES (KL to the
clean prediction) and the attack plugins share one projected-gradient loop.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.api.threat import ThreatModel


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BN statistics untouched) and frozen parameters, restored afterwards.

    Frozen parameters mean an attack step computes input gradients only, not weight
    gradients: about half the backward cost.
    """
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps (Madry et al.): 2/255 for 10 steps at 8/255."""
    return 2.5 * eps / steps


def _flat_norm(t: Tensor) -> Tensor:
    norms: Tensor = t.flatten(1).norm(p=2, dim=1)
    return norms.clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, threat: ThreatModel) -> Tensor:
    """Project onto the eps-ball around ``x``, then clamp to the [0, 1] box."""
    eps = threat.value
    delta = x_adv - x
    if threat.norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: Tensor, threat: ThreatModel, generator: torch.Generator | None = None) -> Tensor:
    """A uniform draw from the eps-ball (Linf) or a random direction and radius (L2)."""
    device = generator.device if generator is not None else x.device
    eps = threat.value
    if threat.norm == "Linf":
        noise = torch.rand(x.shape, generator=generator, device=device).mul_(2 * eps).sub_(eps)
    else:
        direction = torch.randn(x.shape, generator=generator, device=device)
        radius = torch.rand((x.shape[0],), generator=generator, device=device)
        shape = (-1,) + (1,) * (x.dim() - 1)
        noise = direction / _flat_norm(direction) * (eps * radius).view(shape)
    return project(x + noise.to(x.device, x.dtype), x, threat)


def ascent_step(x_adv: Tensor, grad: Tensor, step_size: float, threat: ThreatModel) -> Tensor:
    if threat.norm == "Linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / _flat_norm(grad)


_ATTACK_LOSS_SCALE: ContextVar[float] = ContextVar("attack_loss_scale", default=1.0)


def attack_loss_scale() -> float:
    """The factor on losses whose input gradient an attack takes (1 except under fp16 training)."""
    return _ATTACK_LOSS_SCALE.get()


@contextmanager
def scaled_attack_losses(scale: float) -> Iterator[None]:
    """Scale attack losses by ``scale`` (fp16: keeps small input gradients from underflowing;
    sign and normalised steps do not change)."""
    token = _ATTACK_LOSS_SCALE.set(scale)
    try:
        yield
    finally:
        _ATTACK_LOSS_SCALE.reset(token)


def pgd(
    model: nn.Module,
    x: Tensor,
    threat: ThreatModel,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    steps: int,
    step_size: float,
    start: Tensor | None = None,
) -> Tensor:
    """Maximise ``loss_fn(model(x_adv))`` by projected steepest ascent from ``start``.

    The caller decides the mode (wrap in :func:`attack_mode`) and the start point
    (``x`` when None). Gradients are taken with ``torch.autograd.grad`` on the input
    only, so nothing accumulates in ``.grad`` of the weights.
    """
    x = x.detach()
    x_adv = (x if start is None else start).detach().clone()
    scale = attack_loss_scale()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv))
        if scale != 1.0:
            loss = loss * scale
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project(ascent_step(x_adv.detach(), grad, step_size, threat), x, threat).detach()
    return x_adv


def cross_entropy_loss(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Summed CE against labels ``y``: the inner loss of PGD and PGD-AT."""
    return lambda logits: F.cross_entropy(logits, y, reduction="sum")


def margin_loss(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Summed Carlini-Wagner margin, best wrong logit minus true logit (to maximise).

    Unlike cross-entropy it does not saturate: its gradient stays informative on
    over-confident points, where the softmax rounds to one and CE's gradient to zero.
    """
    def loss(logits: Tensor) -> Tensor:
        true = logits.gather(1, y[:, None]).squeeze(1)
        wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        return (wrong.max(1).values - true).sum()
    return loss
