"""Helpers shared by the file-backed dataset plugins (CIFAR, SVHN, Tiny-ImageNet).

They turn whatever a damaged or missing file raises into one-line
:class:`~robench.api.errors.DataNotFoundError` messages, and check the held-out split.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robench.api import TensorSplit
from robench.api.data import hold_out
from robench.api.errors import ConfigError, DataNotFoundError
from robench.api.params import param

#: What reading a damaged or foreign file can raise inside torchvision / pickle / scipy.
#: (MemoryError is left out on purpose: running out of memory is not damaged data.)
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    OSError,
    EOFError,
    pickle.UnpicklingError,
    struct.error,
    ImportError,
    AttributeError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    OverflowError,
)


def one_line(text: object) -> str:
    """``text`` with all whitespace runs (newlines included) folded to one space."""
    return " ".join(str(text).split())


def check_files(
    title: str, folder: Path, files: list[tuple[str, str | None]], verify_checksums: bool
) -> None:
    """Raise DataNotFoundError unless every ``(name, md5)`` in ``files`` is in ``folder``.

    Presence is checked for all files first, so a half-copied folder names its first
    missing file; with ``verify_checksums`` the md5 of each file is compared as well.
    """
    from torchvision.datasets.utils import check_integrity

    if not folder.is_dir():
        raise DataNotFoundError(f"no {title} data in {folder} (folder missing)")
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataNotFoundError(f"no {title} data in {folder} (missing {missing[0]}{more})")
    if verify_checksums:
        for name, md5 in files:
            if md5 is not None and not check_integrity(str(folder / name), md5):
                raise DataNotFoundError(
                    f"checksum mismatch for {folder / name}: not the official {title} file "
                    f"(expected md5 {md5}; verify_checksums=false skips this check)"
                )


def labels_tensor(labels: Any, num_classes: int, title: str, folder: Path) -> Tensor:
    """int64 labels, checked to lie in 0..num_classes-1."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataNotFoundError(
            f"damaged {title} data in {folder} (labels outside 0..{num_classes - 1}: "
            f"{int(y.min())}..{int(y.max())})"
        )
    return y


def checked_split(x: Tensor, y: Tensor, shape: tuple[int, ...], title: str, folder: Path) -> TensorSplit:
    if tuple(x.shape[1:]) != tuple(shape) or x.shape[0] != y.shape[0]:
        raise DataNotFoundError(
            f"damaged {title} data in {folder} ({x.shape[0]} images of shape "
            f"{tuple(x.shape[1:])} with {y.shape[0]} labels; expected shape {tuple(shape)})"
        )
    return TensorSplit(x, y)


#: the draw of a training subset: the same images for every run, whatever its seed
SUBSET_SEED = 0


def balanced_subset(train: TensorSplit, size: int | None, num_classes: int) -> TensorSplit:
    """``size`` training images with the classes as equal in number as they can be, the
    same ones in every run (drawn with :data:`SUBSET_SEED`); all of them for None.

    A budget (a CPU, a sweep of many runs) then shrinks the data, not the comparison:
    every run of every defense trains on the same images."""
    if size is None:
        return train
    if size >= len(train):
        raise ConfigError(f"data.train_subset: {size} is not smaller than the {len(train)} training images")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(SUBSET_SEED))
    labels = train.y[perm]
    chosen = []
    for c in range(num_classes):
        want = size // num_classes + (1 if c < size % num_classes else 0)
        members = perm[labels == c]
        if len(members) < want:
            raise ConfigError(f"data.train_subset: {size} needs {want} images of class {c}, the data has {len(members)}")
        chosen.append(members[:want])
    index = torch.cat(chosen).sort().values
    return TensorSplit(train.x[index], train.y[index])


def split_off_val(train: TensorSplit, val_size: int, seed: int) -> tuple[TensorSplit, TensorSplit | None]:
    """robench.api.data.hold_out, with a config error (not a ValueError) when val_size is too big."""
    if val_size > 0 and val_size >= len(train):
        raise ConfigError(
            f"data.val_size: {val_size} is not smaller than the {len(train)} training images"
        )
    return hold_out(train, val_size, seed)


@dataclass(frozen=True)
class TorchvisionParams:
    val_size: int = param(
        1000, ge=0, help="images held out from the training set (fixed by the seed) for checkpoint selection"
    )
    verify_checksums: bool = param(
        True,
        help="compare every file's md5 with the official one (as torchvision does); "
        "false only checks that the files exist",
    )
