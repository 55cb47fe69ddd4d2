"""CIFAR-10 and CIFAR-100, read by torchvision's own dataset classes.

Files live where torchvision puts them: ``ROOT/cifar-10-batches-py/`` and
``ROOT/cifar-100-python/`` (the extracted python-version archives). :meth:`load` never
downloads; :meth:`fetch` does, with torchvision.

torchvision checks the md5 checksum of every file when a dataset is opened. That is the
``verify_checksums`` hyperparameter here (default on); turned off, only the files'
presence is checked, and torchvision's own pickle reader still reads them. Either way a
missing, truncated or foreign file raises :class:`~robench.api.errors.DataNotFoundError`
with one line naming the folder and the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from robench.api import Dataset, DataSplits, TensorSplit
from robench.api.data import random_crop_flip, uint8_nchw
from robench.api.errors import DataNotFoundError
from robench.api.threat import ThreatModel
from robench_plugins.datasets._common import (
    PARSE_ERRORS,
    TorchvisionParams,
    check_files,
    checked_split,
    labels_tensor,
    one_line,
    split_off_val,
)


def _cifar_class(base: Any, verify_checksums: bool) -> type:
    """A subclass of torchvision's CIFAR10/CIFAR100 whose integrity check names the problem.

    torchvision's ``_check_integrity`` returns a bare False ("Dataset not found or
    corrupted"); this one raises DataNotFoundError naming the missing or mismatching
    file, and skips the md5 comparison when ``verify_checksums`` is off (the metadata
    file's md5, which torchvision checks separately in ``_load_meta``, too). The data is
    still read by torchvision's ``__init__`` and ``_load_meta``.
    """

    class Checked(base):
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


class _CIFAR(Dataset[TorchvisionParams]):
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
        p = self.params
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
