"""The training loop: SGD with momentum, a per-step LR schedule, a defense's batch loss.

Metrics accumulate on the device and are read once per epoch, so the loop does not
synchronise with the GPU at every step.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.api import Defense, TensorSplit
from robench.config import TrainConfig
from robench.engine.batches import iterate_batches, num_batches
from robench.errors import RobenchError
from robench.progress import NullReporter, Reporter
from robench.threat import ThreatModel


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    lr: float
    seconds: float


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    model: nn.Module,
    defense: Defense,
    split: TensorSplit,
    threat: ThreatModel,
    cfg: TrainConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
    augment: Callable[[Tensor], Tensor] | None = None,
    reporter: Reporter | None = None,
) -> list[EpochStats]:
    """Train ``model`` in place for ``cfg.epochs`` epochs; returns per-epoch statistics."""
    reporter = reporter or NullReporter()
    optimizer = make_optimizer(model, cfg)
    steps = num_batches(len(split), cfg.batch_size)
    schedule = make_schedule(optimizer, cfg, steps * cfg.epochs)
    history: list[EpochStats] = []
    task = reporter.task("train", cfg.epochs * steps)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lr = optimizer.param_groups[0]["lr"]
        for x, y in iterate_batches(
            split, cfg.batch_size, device=device, shuffle=True, generator=generator, augment=augment
        ):
            out = defense.loss(model, x, y, threat)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += out.loss.detach() * y.shape[0]
            correct += (out.logits.detach().argmax(1) == y).sum()
            task.advance(1, epoch=f"{epoch}/{cfg.epochs}")
        loss = loss_sum.item() / len(split)
        if not math.isfinite(loss):
            raise RobenchError(f"training loss became {loss} in epoch {epoch}; stopping")
        history.append(
            EpochStats(epoch, loss, 100.0 * correct.item() / len(split), lr, time.perf_counter() - start)
        )
    task.done()
    return history
