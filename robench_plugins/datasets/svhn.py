"""SVHN (Street View House Numbers, cropped digits), read by torchvision's SVHN class.

Files: ``ROOT/svhn/train_32x32.mat`` (73,257 images) and ``ROOT/svhn/test_32x32.mat``
(26,032); the 531,131-image ``extra`` set is not used. torchvision reads the .mat files
with scipy and maps the files' label 10 (digit 0) to 0. :meth:`load` never downloads;
:meth:`fetch` does, with torchvision. ``verify_checksums`` works as for CIFAR (see
:mod:`robench_plugins.datasets.cifar`).

Augmentation is a padded random crop *without* a horizontal flip: a mirrored digit is
not the same digit (2 and 5, 3 and a backwards 3).
"""
from __future__ import annotations

from pathlib import Path

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

TITLE = "SVHN"
FOLDER = "svhn"


def _svhn_class(verify_checksums: bool) -> type:
    """torchvision's SVHN with an integrity check that names the missing or mismatching
    file, and that only checks presence when ``verify_checksums`` is off. torchvision's
    ``__init__`` (scipy.io.loadmat, the 10 -> 0 label map) still reads the data."""
    from torchvision.datasets import SVHN as Base

    class Checked(Base):
        def _check_integrity(self) -> bool:
            check_files(TITLE, Path(self.root), [(self.filename, self.file_md5)], verify_checksums)
            return True

    Checked.__name__ = Checked.__qualname__ = Base.__name__
    return Checked


class SVHN(Dataset[TorchvisionParams]):
    """SVHN cropped digits: 73,257 train / 26,032 test colour images, 32x32, 10 classes."""

    Params = TorchvisionParams
    num_classes = 10
    input_shape = (3, 32, 32)
    # the commonly used per-channel mean / std of the SVHN training images
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    # Linf 8/255, the budget most robustness papers report on SVHN
    threat_model = ThreatModel("Linf", "8/255")

    def _read(self, folder: Path, split: str, verify_checksums: bool) -> TensorSplit:
        from scipy.io.matlab import MatReadError  # torchvision reads the files with scipy

        try:
            ds = _svhn_class(verify_checksums)(str(folder), split=split, download=False)
            x = uint8_nchw(ds.data, "NCHW")  # torchvision already transposed HWCN -> NCHW
        except DataNotFoundError:
            raise
        except (*PARSE_ERRORS, MatReadError) as exc:
            raise DataNotFoundError(
                f"cannot read {TITLE} {split} data in {folder} ({type(exc).__name__}: {one_line(exc)})"
            ) from exc
        y = labels_tensor(ds.labels, self.num_classes, TITLE, folder)
        return checked_split(x, y, self.input_shape, TITLE, folder)

    def load(self, root: Path, seed: int) -> DataSplits:
        p = self.params
        folder = Path(root) / FOLDER
        # both files present before reading the first (a 180 MB .mat) at all
        check_files(TITLE, folder, [("train_32x32.mat", None), ("test_32x32.mat", None)], False)
        train = self._read(folder, "train", p.verify_checksums)
        test = self._read(folder, "test", p.verify_checksums)
        train, val = split_off_val(train, p.val_size, seed)
        return DataSplits(train=train, test=test, val=val)

    def fetch(self, root: Path) -> None:
        from torchvision.datasets import SVHN as Base

        # torchvision skips each download when the file is there with the right md5
        for split in ("train", "test"):
            Base(str(Path(root) / FOLDER), split=split, download=True)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random 32x32 crop of the image zero-padded by 4 px; never flipped."""
        return random_crop_flip(x, padding=4, flip=False, generator=generator)
