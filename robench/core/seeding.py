"""One seed for everything random, so CPU runs repeat bit for bit.

Which kernels run (deterministic or autotuned, TF32 or not) is set by
:mod:`robench.engine.backend`.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """An independent stream, e.g. for evaluation, unaffected by what training consumed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
