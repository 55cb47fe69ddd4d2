"""CW-Linf: PGD on the Carlini-Wagner margin loss (Carlini & Wagner, 2017; Madry et al.).

The margin max_{j != y} z_j - z_y does not saturate like cross-entropy does, so it
breaks points that CE-based PGD misses on over-confident models. Everything else
(steps, step size, random start, restarts, projection) is :class:`PGD`'s.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robench_plugins.attacks.pgd import PGD


def margin_loss(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Summed CW margin: the best wrong logit minus the true logit (to maximise)."""
    def loss(logits: Tensor) -> Tensor:
        true = logits.gather(1, y[:, None]).squeeze(1)
        wrong = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        return (wrong.max(1).values - true).sum()
    return loss


class CW(PGD):
    name = "CW"

    def inner_loss(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        return margin_loss(y)
