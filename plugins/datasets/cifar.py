"""CIFAR-10 and CIFAR-100, read by torchvision's own dataset classes.

Files live where torchvision puts them: ``ROOT/cifar-10-batches-py/`` and
``ROOT/cifar-100-python/`` (the extracted python-version archives). :meth:`load` never
downloads; :meth:`fetch` does, with torchvision.

torchvision checks the md5 checksum of every file when a dataset is opened. That is the
``verify_checksums`` hyperparameter here (default on); turned off, only the files'
presence is checked, and torchvision's own pickle reader still reads them. Either way a
missing, truncated or foreign file raises :class:`~robench.errors.DataNotFoundError`
with one line naming the folder and the file.

This module also holds the small helpers the SVHN plugin shares.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from robench.api import DataSplits, Dataset, TensorSplit
from robench.data import hold_out, random_crop_flip, uint8_nchw
from robench.errors import ConfigError, DataNotFoundError
from robench.params import param
from robench.threat import ThreatModel

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


def split_off_val(train: TensorSplit, val_size: int, seed: int) -> tuple[TensorSplit, TensorSplit | None]:
    """robench.data.hold_out, with a config error (not a ValueError) when val_size is too big."""
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


def _cifar_class(base: type, verify_checksums: bool) -> type:
    """A subclass of torchvision's CIFAR10/CIFAR100 whose integrity check names the problem.

    torchvision's ``_check_integrity`` returns a bare False ("Dataset not found or
    corrupted"); this one raises DataNotFoundError naming the missing or mismatching
    file, and skips the md5 comparison when ``verify_checksums`` is off (the metadata
    file's md5, which torchvision checks separately in ``_load_meta``, too). The data is
    still read by torchvision's ``__init__`` and ``_load_meta``.
    """

    class Checked(base):  # type: ignore[misc, valid-type]
        title: ClassVar[str] = base.__name__.replace("CIFAR", "CIFAR-")
        if not verify_checksums:
            meta = {**base.meta, "md5": None}  # check_integrity(path, None) = exists

        def _check_integrity(self) -> bool:
            files = [(n, md5) for n, md5 in self.train_list + self.test_list]
            files.append((self.meta["filename"], self.meta["md5"]))
            check_files(self.title, Path(self.root) / self.base_folder, files, verify_checksums)
            return True

    Checked.__name__ = Checked.__qualname__ = base.__name__
    return Checked


class _CIFAR(Dataset):
    Params = TorchvisionParams
    input_shape = (3, 32, 32)
    # Linf 8/255, the budget of RobustBench's CIFAR leaderboards and most papers
    threat_model = ThreatModel("Linf", "8/255")
    #: torchvision.datasets class name
    _torchvision_name: ClassVar[str]

    @property
    def _title(self) -> str:
        return self._torchvision_name.replace("CIFAR", "CIFAR-")

    def _read(self, root: Path, train: bool, verify_checksums: bool) -> TensorSplit:
        import torchvision.datasets

        base = getattr(torchvision.datasets, self._torchvision_name)
        folder = Path(root) / base.base_folder
        try:
            ds = _cifar_class(base, verify_checksums)(str(root), train=train, download=False)
            # torchvision keeps (N, 32, 32, 3), a transposed view of the (N, 3, 32, 32)
            # rows it unpickled: transposing back is free and needs no copy.
            x = uint8_nchw(np.transpose(ds.data, (0, 3, 1, 2)), "NCHW")
        except DataNotFoundError:
            raise
        except PARSE_ERRORS as exc:
            raise DataNotFoundError(
                f"cannot read {self._title} data in {folder} ({type(exc).__name__}: {one_line(exc)})"
            ) from exc
        y = labels_tensor(ds.targets, self.num_classes, self._title, folder)
        return checked_split(x, y, self.input_shape, self._title, folder)

    def load(self, root: Path, seed: int) -> DataSplits:
        p: TorchvisionParams = self.params  # type: ignore[assignment]
        train = self._read(root, True, p.verify_checksums)
        # the train read already checked (and, if asked, verified) every file
        test = self._read(root, False, False)
        train, val = split_off_val(train, p.val_size, seed)
        return DataSplits(train=train, test=test, val=val)

    def fetch(self, root: Path) -> None:
        import torchvision.datasets

        # torchvision skips the download when the files are there with the right md5
        getattr(torchvision.datasets, self._torchvision_name)(str(root), train=True, download=True)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random 32x32 crop of the image zero-padded by 4 px, and a random horizontal flip."""
        return random_crop_flip(x, padding=4, flip=True, generator=generator)


class CIFAR10(_CIFAR):
    """CIFAR-10: 50,000 train / 10,000 test colour images, 32x32, 10 classes."""

    _torchvision_name = "CIFAR10"
    num_classes = 10
    # the commonly used per-channel mean / std of the CIFAR-10 training images
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2471, 0.2435, 0.2616)


class CIFAR100(_CIFAR):
    """CIFAR-100: 50,000 train / 10,000 test colour images, 32x32, 100 fine classes."""

    _torchvision_name = "CIFAR100"
    num_classes = 100
    # the commonly used per-channel mean / std of the CIFAR-100 training images
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
