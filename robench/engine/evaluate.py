"""Clean and robust accuracy, attacks applied in sequence to points still robust.

A point counts as robust after attack k only if it was classified correctly clean and
under attacks 1..k; the last entry is therefore the worst case over the suite, and
later (usually stronger, slower) attacks run on ever fewer points.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.api import Attack, TensorSplit
from robench.engine.batches import iterate_batches
from robench.progress import NullReporter, Reporter
from robench.threat import ThreatModel


@dataclass(frozen=True)
class EvalResult:
    #: percent accuracy: "clean", then one entry per attack label (cumulative worst case).
    accuracy: dict[str, float]
    n: int


@torch.no_grad()
def _predict(model: nn.Module, split: TensorSplit, idx: Tensor, batch_size: int, device: torch.device) -> Tensor:
    preds = [
        model(x).argmax(1).cpu()
        for x, _ in iterate_batches(split, batch_size, device=device, indices=idx)
    ]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _percent(flags: Tensor) -> float:
    """Exact percentage from integer counts (no float32 rounding noise in records)."""
    return 100.0 * int(flags.sum()) / len(flags) if len(flags) else 0.0


def subset_indices(n_total: int, n_eval: int | None, seed: int = 0) -> Tensor:
    """A fixed subset (same for every run) when ``n_eval`` < the split size."""
    if n_eval is None or n_eval >= n_total:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[:n_eval].sort().values


def evaluate(
    model: nn.Module,
    split: TensorSplit,
    attacks: Sequence[Attack],
    threat: ThreatModel,
    *,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    n_eval: int | None = None,
    reporter: Reporter | None = None,
) -> EvalResult:
    reporter = reporter or NullReporter()
    was_training = model.training
    model.eval()
    idx = subset_indices(len(split), n_eval)
    n = len(idx)
    task = reporter.task("eval clean", 1)
    robust = _predict(model, split, idx, batch_size, device) == split.y[idx.to(split.y.device)].cpu()
    task.advance()
    task.done()
    accuracy = {"clean": _percent(robust)}
    for attack in attacks:
        label = attack.label()
        todo = idx[robust]
        task = reporter.task(f"eval {label}", max(len(todo), 1))
        still = torch.zeros(len(todo), dtype=torch.bool)
        pos = 0
        for x, y in iterate_batches(split, batch_size, device=device, indices=todo):
            x_adv = attack.perturb(model, x, y, threat, generator=generator)
            with torch.no_grad():
                still[pos : pos + len(y)] = (model(x_adv).argmax(1) == y).cpu()
            pos += len(y)
            task.advance(len(y))
        task.done()
        robust[robust.clone()] = still
        accuracy[label] = _percent(robust)
    model.train(was_training)
    return EvalResult(accuracy, n)
