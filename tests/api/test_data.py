"""uint8 splits, held-out validation and batch augmentation on tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robench.api import TensorSplit
from robench.api.data import hold_out, random_crop_flip, uint8_nchw


def test_uint8_nchw_layouts() -> None:
    nhwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    t = uint8_nchw(nhwc)
    assert t.shape == (2, 3, 4, 5) and t.is_contiguous()
    assert t[1, 2, 3, 4] == nhwc[1, 3, 4, 2]
    hwcn = np.moveaxis(nhwc, 0, -1)  # SVHN's .mat layout
    assert torch.equal(uint8_nchw(hwcn, "HWCN"), t)
    with pytest.raises(ValueError):
        uint8_nchw(nhwc.astype(np.float32))


def test_hold_out_is_disjoint_fixed_and_complete() -> None:
    split = TensorSplit(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100))
    train, val = hold_out(split, 10, seed=3)
    assert val is not None and (len(train), len(val)) == (90, 10)
    assert set(train.y.tolist()).isdisjoint(val.y.tolist())
    assert sorted(train.y.tolist() + val.y.tolist()) == list(range(100))
    again = hold_out(split, 10, seed=3)[1]
    other = hold_out(split, 10, seed=4)[1]
    assert torch.equal(again.y, val.y) and not torch.equal(other.y, val.y)
    assert hold_out(split, 0, seed=0) == (split, None)
    with pytest.raises(ValueError):
        hold_out(split, 100, seed=0)


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, i
        shifts.add(matches[0])
    assert len(shifts) > 5  # offsets vary across the batch


def test_flip_and_determinism() -> None:
    x = torch.rand(200, 1, 4, 4)
    out = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 60 < sum(flipped) < 140
    again = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)
