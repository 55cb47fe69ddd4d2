"""Classifiers that take [0, 1] inputs: normalisation lives inside the model.

Normalising outside the model silently changes the attack's eps and box (the most
reported pitfall across RobustBench, AutoAttack and torchattacks), so robench never
hands an attack a model that expects normalised inputs.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class NormalizedClassifier(nn.Module):
    """``net(normalize(x))``; ``net`` is what the architecture plugin built."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(self.normalize(x))
        return logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def eager_forwards() -> Iterator[None]:
    """Run forward passes eagerly inside, even where the engine compiled the model.

    For losses that differentiate through input gradients (double backward), which
    torch.compile does not support; everything else in the step stays compiled.
    """
    with torch.compiler.set_stance("force_eager"):
        yield


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm inside still normalises with each batch's own statistics but
    leaves the running statistics, which evaluation uses, as they were: for forward
    passes on inputs that evaluation will never see (for instance feature statistics a
    defense perturbed on purpose)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False  # train mode: batch statistics, and no running update
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True
