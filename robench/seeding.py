"""One seed for everything random, so CPU runs repeat bit for bit."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # speed first: cuDNN picks the fastest kernels, nondeterministic ones included
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """An independent stream, e.g. for evaluation, unaffected by what training consumed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
