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


# The streams below are derived from the run's seed by fixed formulas: changing one
# changes every recorded run that draws from it (tests/golden holds them bit for bit).


def augmentation_seed(seed: int) -> int:
    """The seed of data augmentation's generator on an accelerator.

    Augmentation draws on the training device so that no step waits for a copy from
    the host, and a generator lives on one device: it cannot be the CPU generator that
    draws the batch order. Offset from ``seed`` so that the two streams are not the
    same numbers. (On a CPU, augmentation shares the order's generator.)"""
    return seed * 1_000_033 + 7


def rank_noise_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a rank's global torch generator at the start of ``epoch`` under DDP.

    The global generator draws a defense's attack noise. Each rank seeds its own so
    that ranks draw different noise for their different shards, and reseeds every
    epoch so that a resume at an epoch's end needs only rank 0's saved generators."""
    return (seed * 1_000_003 + epoch) * 1009 + rank


def validation_seed(seed: int, epoch: int) -> int:
    """The seed of the generator for ``epoch``'s validation attack (its random starts).

    A generator of its own, fresh each epoch, so that validating never moves
    training's streams (training draws the same numbers however long validation
    is) and an epoch's score is the same whether or not the run was resumed."""
    return seed * 100_003 + epoch
