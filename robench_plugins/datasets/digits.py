"""scikit-learn's handwritten digits: 1,797 real 8x8 images that ship with scikit-learn.

No download, so it is the embedded default for runs on a laptop CPU and in CI. Pixel
values 0..16 are scaled to [0, 1]. The test split has its own seed (``split_seed``),
so it never depends on the seed ``load`` is given (which draws the validation split),
and the normalisation statistics come from the images outside the test split only. The threat model, Linf eps = 3/16 (three of the
sixteen grey levels), is chosen so that it means something: standard training falls
below 10% PGD accuracy while PGD-AT keeps well over 50% (measured figures: README).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from robench.api import Dataset, DataSplits, TensorSplit
from robench.api.errors import ConfigError
from robench.api.params import param
from robench.api.threat import ThreatModel


@dataclass(frozen=True)
class DigitsParams:
    test_fraction: float = param(0.2, gt=0, lt=1, help="share of images held out for testing")
    val_size: int = param(180, ge=0, help="images held out from training for checkpoint selection")
    split_seed: int = param(0, ge=0, help="seed of the stratified test split: every run tests on the same images")


@cache
def _images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images scaled to [0, 1] (N, 1, 8, 8), and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images.astype(np.float32) / 16.0)[:, None, :, :], bunch.target.astype(np.int64)


class Digits(Dataset[DigitsParams]):
    Params = DigitsParams
    num_classes = 10
    input_shape = (1, 8, 8)
    # 3 of the 16 grey levels the digits use
    threat_model = ThreatModel("Linf", "3/16")
    # the images ship inside scikit-learn
    needs_files = False

    def __init__(self, params: DigitsParams | None = None) -> None:
        super().__init__(params)
        x_rest, _, _, _ = self._test_split()
        # mean and std of the images outside the test split: the test set stays unseen
        self.mean, self.std = (float(x_rest.mean()),), (float(x_rest.std()),)

    def _test_split(self) -> list[np.ndarray]:
        """x_rest, x_test, y_rest, y_test: the same test images whatever the run's seed."""
        from sklearn.model_selection import train_test_split

        x, y = _images()
        return train_test_split(x, y, test_size=self.params.test_fraction, random_state=self.params.split_seed, stratify=y)

    def load(self, root: Path, seed: int) -> DataSplits:
        from sklearn.model_selection import train_test_split

        p = self.params
        x_rest, x_test, y_rest, y_test = self._test_split()
        y = _images()[1]
        val = None
        classes = len(np.unique(y))
        if p.val_size and not classes <= p.val_size <= len(y_rest) - classes:  # a stratified split needs both
            raise ConfigError(
                f"data.val_size: {p.val_size} must be between {classes} and {len(y_rest) - classes} "
                f"with the {len(y_rest)} images left for training (one per class on each side)"
            )
        if p.val_size:
            x_rest, x_val, y_rest, y_val = train_test_split(
                x_rest, y_rest, test_size=p.val_size, random_state=seed, stratify=y_rest
            )
            val = TensorSplit(torch.from_numpy(x_val), torch.from_numpy(y_val))
        return DataSplits(
            train=TensorSplit(torch.from_numpy(x_rest), torch.from_numpy(y_rest)),
            test=TensorSplit(torch.from_numpy(x_test), torch.from_numpy(y_test)),
            val=val,
        )
