"""Batches drawn straight from in-memory tensors (no per-image transforms, no workers)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from robench.api.contracts import TensorSplit


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    split: TensorSplit,
    batch_size: int,
    *,
    device: torch.device,
    augment: Callable[[Tensor], Tensor] | None = None,
    indices: Tensor | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x in [0,1] float, y long) on ``device``, in the order of ``indices`` (default: all, in order)."""
    order = (indices if indices is not None else torch.arange(len(split))).to(split.x.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = split.images(idx).to(device, non_blocking=True)
        y = split.y[idx].to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        yield x, y
