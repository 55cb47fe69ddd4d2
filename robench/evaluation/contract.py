"""What an attack plugin hands back is checked here, not trusted.

A tensor of the wrong type or shape would fail deep inside the model's forward pass,
or worse, broadcast into a meaningless accuracy; adversaries outside the eps-ball or
the [0, 1] box would inflate the attack's success without any error at all. Every
check raises :class:`~robench.api.errors.PluginLoadError`, one line that names the plugin,
its distribution and the method that broke the contract, so the evaluation stops
before a wrong number is recorded.
"""
from __future__ import annotations

import torch
from torch import Tensor

from robench.api.contracts import Attack
from robench.api.errors import PluginLoadError
from robench.api.threat import ThreatModel
from robench.core.registry import plugin_origin

#: how far (absolute, per pixel for the box, on the norm for the ball) an adversary may
#: lie outside the threat model: float32 rounding of ``x + delta`` is about 1e-7, and
#: 1e-5 is 0.03% of 8/255, too little to change any result
TOLERANCE = 1e-5


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape))


def overrides(attack: Attack, method: str) -> bool:
    """Whether the plugin's class overrides :class:`~robench.api.Attack`'s ``method``."""
    return getattr(type(attack), method, None) not in (None, getattr(Attack, method))


def entry_method(attack: Attack) -> str:
    """The method the evaluation calls: ``evaluate_points`` where the plugin overrides
    it, ``still_correct`` for plugins written for plugin API 1.0 that override that
    instead, else ``perturb``."""
    return next((m for m in ("evaluate_points", "still_correct") if overrides(attack, m)), "perturb")


def blame(attack: Attack, method: str) -> str:
    """``attack plugin 'pgd' from robench 0.1.0 (PGD-20): perturb() returned``."""
    return f"{plugin_origin(attack)} ({attack.label()}): {method}() returned"


def check_adversaries(attack: Attack, method: str, x_adv: object, x: Tensor) -> Tensor:
    """Adversaries must be float inputs shaped like ``x``, on its device."""
    wanted = f"it must return adversarial inputs shaped like its input ({_shape(x)}, float, on {x.device})"
    if not isinstance(x_adv, Tensor):
        raise PluginLoadError(f"{blame(attack, method)} {type(x_adv).__name__}, not a tensor; {wanted}")
    if x_adv.shape != x.shape:
        raise PluginLoadError(f"{blame(attack, method)} adversaries of shape {_shape(x_adv)}; {wanted}")
    if not x_adv.dtype.is_floating_point or x_adv.device != x.device:
        raise PluginLoadError(f"{blame(attack, method)} a {x_adv.dtype} tensor on {x_adv.device}; {wanted}")
    return x_adv


def check_flags(attack: Attack, method: str, flags: object, y: Tensor) -> Tensor:
    """``still_correct`` must be one boolean per input."""
    wanted = f"it must return one boolean flag per input ({len(y)})"
    if not isinstance(flags, Tensor):
        raise PluginLoadError(f"{blame(attack, method)} {type(flags).__name__}, not a tensor; {wanted}")
    if flags.dtype != torch.bool or tuple(flags.shape) != (len(y),):
        raise PluginLoadError(f"{blame(attack, method)} a {flags.dtype} tensor of shape {_shape(flags)}; {wanted}")
    return flags


def distances(x_adv: Tensor, x: Tensor, norm: str, chunk: int = 1024) -> Tensor:
    """Per-point distance in ``norm``, in float64 so that the check adds no rounding of
    its own, in chunks so that a whole test set needs no double-size copy."""
    parts = []
    for i in range(0, len(x), chunk):
        delta = (x_adv[i : i + chunk].detach().double() - x[i : i + chunk].detach().double()).flatten(1)
        parts.append(delta.abs().amax(1) if norm == "Linf" else delta.norm(p=2, dim=1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def check_in_threat(attack: Attack, method: str, x_adv: Tensor, x: Tensor, threat: ThreatModel) -> None:
    """Every adversary inside the eps-ball around its input and inside [0, 1], up to
    :data:`TOLERANCE`; otherwise one line saying how many points left which, and how far."""
    n = len(x)
    if n == 0:
        return
    problems = []
    dist = distances(x_adv, x, threat.norm)
    outside = dist > threat.value + TOLERANCE
    if outside.any():
        problems.append(
            f"{int(outside.sum())} of {n} leave the {threat.norm} ball of eps {threat.eps} "
            f"(largest distance {float(dist.max()):.6g}, allowed {threat.value:.6g})"
        )
    flat = x_adv.detach().flatten(1)
    low, high = flat.amin(1).double(), flat.amax(1).double()
    out_of_box = (low < -TOLERANCE) | (high > 1 + TOLERANCE) | ~torch.isfinite(low + high)
    if out_of_box.any():
        problems.append(
            f"{int(out_of_box.sum())} of {n} leave the [0, 1] box "
            f"(values from {float(low.min()):.6g} to {float(high.max()):.6g})"
        )
    if problems:
        raise PluginLoadError(
            f"{blame(attack, method)} adversaries outside the threat model: {'; '.join(problems)}; "
            "an attack must keep every adversary inside the eps-ball and the [0, 1] box "
            "(robench.api.perturb.project does both)"
        )
