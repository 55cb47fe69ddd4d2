"""Tools for dataset plugins: uint8 tensor splits, held-out validation, batch augmentation.

Images are held as one uint8 tensor per split (a quarter of float32's memory) and
augmented a whole batch at a time on whatever device the batch is on, instead of
per-image PIL transforms in worker processes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robench.api.contracts import TensorSplit


def data_cache() -> Path:
    """robench's own data folder, ``$XDG_CACHE_HOME/robench/data`` (``~/.cache/robench/data``).

    It is one of the places robench looks for datasets, and where a plugin may keep a
    prepared copy of files it cannot read where they are (decompressed, decoded).
    """
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "robench" / "data"


def uint8_nchw(images: np.ndarray | Tensor, layout: str = "NHWC") -> Tensor:
    """A contiguous uint8 (N, C, H, W) tensor from NHWC/NCHW/HWCN arrays (SVHN's .mat is HWCN)."""
    t = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {t.dtype}")
    order = {"NHWC": (0, 3, 1, 2), "NCHW": (0, 1, 2, 3), "HWCN": (3, 2, 0, 1)}[layout]
    return t.permute(*order).contiguous()


def hold_out(split: TensorSplit, n: int, seed: int) -> tuple[TensorSplit, TensorSplit | None]:
    """Split ``n`` images off ``split`` (fixed by ``seed``) for validation / checkpoint selection."""
    if n <= 0:
        return split, None
    if n >= len(split):
        raise ValueError(f"cannot hold out {n} of {len(split)} images")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n].sort().values, perm[n:].sort().values
    return (
        TensorSplit(split.x[train_idx], split.y[train_idx]),
        TensorSplit(split.x[val_idx], split.y[val_idx]),
    )


def random_crop_flip(
    x: Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop after zero padding, and optionally a random horizontal flip, per image.

    Works on a whole batch on its own device. Offsets and flips are drawn from
    ``generator`` on the generator's device (so the augmentation is reproducible); with
    a generator on the batch's device, as robench's training loop passes, no step waits
    for a copy from the host.
    """
    n, _, h, w = x.shape
    draw = generator.device if generator is not None else x.device
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator, device=draw) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x
