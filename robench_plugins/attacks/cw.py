"""CW-Linf: PGD on the Carlini-Wagner margin loss (Carlini & Wagner, 2017; Madry et al.).

The margin max_{j != y} z_j - z_y does not saturate like cross-entropy does, so it
breaks points that CE-based PGD misses on over-confident models. Everything else
(steps, step size, random start, restarts, projection) is :class:`PGD`'s.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from robench.api.perturb import margin_loss
from robench_plugins.attacks.pgd import PGD


class CW(PGD):
    name = "CW"

    def inner_loss(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        return margin_loss(y)
