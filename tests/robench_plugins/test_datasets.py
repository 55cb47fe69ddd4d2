"""The file-backed dataset plugins (cifar10, cifar100, svhn, tinyimagenet) on real formats.

Each test writes small files in the datasets' real on-disk formats (Python-2-style
pickles for CIFAR, MATLAB files for SVHN, JPEG trees for Tiny-ImageNet) and loads them
through the registry and torchvision's readers, exactly as a run does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import (
    PER_BATCH,
    TINY_WNIDS,
    write_cifar10,
    write_cifar100,
    write_jpeg,
    write_py2_pickle,
    write_svhn,
    write_tiny,
)
from PIL import Image

from robench.api import TensorSplit
from robench.api.data import hold_out
from robench.api.errors import ConfigError, DataNotFoundError
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry


def _create(name: str, **params):
    return get_registry("dataset").create(name, params)


def _one_line_error(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def _rows(split: TensorSplit) -> set[bytes]:
    return {bytes(img.numpy().tobytes()) for img in split.x}


def _decoded(path: Path) -> torch.Tensor:
    """The reference decode: PIL, converted to RGB, as CHW uint8."""
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy())


# ----------------------------------------------------------------------------- attributes
@pytest.mark.parametrize(
    "name, classes, shape, mean, std",
    [
        ("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
        ("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        ("svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        ("tinyimagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    ],
)
def test_dataset_attributes_and_params(name, classes, shape, mean, std) -> None:
    ds = _create(name)
    assert (ds.num_classes, tuple(ds.input_shape)) == (classes, shape)
    assert tuple(ds.mean) == mean and tuple(ds.std) == std
    assert ds.threat_model == ThreatModel("Linf", "8/255") and ds.threat_model.eps == "8/255"
    assert ds.params.val_size == 1000
    flag = "cache" if name == "tinyimagenet" else "verify_checksums"
    assert getattr(ds.params, flag) is True
    with pytest.raises(ConfigError, match="val_size"):
        _create(name, val_size=-1)


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_loads_real_batches_through_torchvision(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    ds = _create("cifar10", verify_checksums=False, val_size=10)
    splits = ds.load(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    for split in (splits.train, splits.val, splits.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == (3, 32, 32) and split.x.is_contiguous()
    # one known image, pixel by pixel: row-major R, G, B planes of 32x32
    row, img = written["test_x"][0], splits.test.x[0]
    assert img[0, 0, 1] == row[1] and img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]
    assert img[0, 5, 7] == row[5 * 32 + 7]
    assert torch.equal(splits.test.x, torch.from_numpy(written["test_x"].reshape(-1, 3, 32, 32)))
    assert splits.test.y.tolist() == written["test_y"].tolist()
    # train + val are data_batch_1..5 in order, split by robench.api.data.hold_out
    full = TensorSplit(torch.from_numpy(written["train_x"].reshape(-1, 3, 32, 32)),
                       torch.from_numpy(written["train_y"]).long())
    exp_train, exp_val = hold_out(full, 10, 0)
    assert torch.equal(splits.train.x, exp_train.x) and torch.equal(splits.train.y, exp_train.y)
    assert torch.equal(splits.val.x, exp_val.x) and torch.equal(splits.val.y, exp_val.y)
    assert not _rows(splits.train) & _rows(splits.val)
    assert _rows(splits.train) | _rows(splits.val) == _rows(full)
    again, other = ds.load(tmp_path, seed=0), ds.load(tmp_path, seed=1)
    assert torch.equal(again.val.x, splits.val.x) and torch.equal(again.train.y, splits.train.y)
    assert not torch.equal(other.val.x, splits.val.x)
    # val_size=0: no validation split, the whole training set
    assert _create("cifar10", verify_checksums=False, val_size=0).load(tmp_path, 0).val is None


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    ds = _create("cifar100", verify_checksums=False, val_size=10)
    splits = ds.load(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 30)
    assert torch.equal(splits.test.x, torch.from_numpy(written["test_x"].reshape(-1, 3, 32, 32)))
    assert splits.test.y.tolist() == written["test_y"].tolist()  # fine, not coarse, labels
    assert splits.test.y.dtype == torch.int64 and splits.train.x.dtype == torch.uint8
    assert max(splits.train.y.max(), splits.val.y.max()) >= 20  # coarse labels stop at 19
    assert not _rows(splits.train) & _rows(splits.val)


def test_verify_checksums_rejects_files_that_are_not_the_official_ones(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(DataNotFoundError) as exc:
        _create("cifar10", val_size=10).load(tmp_path, seed=0)  # verify_checksums defaults to on
    message = _one_line_error(exc)
    assert "checksum mismatch" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "robench " not in message  # how to fetch is the core's to add


def test_missing_cifar_folder_or_file_names_what_and_where(tmp_path: Path) -> None:
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(DataNotFoundError) as exc:
            _create(name, verify_checksums=False).load(tmp_path / "nowhere", seed=0)
        assert str(tmp_path / "nowhere" / folder) in _one_line_error(exc)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    for verify in (False, True):
        with pytest.raises(DataNotFoundError) as exc:
            _create("cifar10", verify_checksums=verify, val_size=10).load(tmp_path, seed=0)
        message = _one_line_error(exc)
        assert message == f"no CIFAR-10 data in {tmp_path / 'cifar-10-batches-py'} (missing data_batch_3)"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong-content", "bad-label"])
def test_damaged_cifar_files_give_one_line(tmp_path: Path, damage: str) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a pickle at all\n" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong-content":
        write_py2_pickle(path, {b"labels": [0] * PER_BATCH, b"data": np.zeros((PER_BATCH, 100), np.uint8)})
    else:
        write_py2_pickle(path, {b"labels": [10] * PER_BATCH, b"data": np.zeros((PER_BATCH, 3072), np.uint8)})
    with pytest.raises(DataNotFoundError) as exc:
        _create("cifar10", verify_checksums=False, val_size=10).load(tmp_path, seed=0)
    message = _one_line_error(exc)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "CIFAR-10" in message


# ----------------------------------------------------------------------------- SVHN
def test_svhn_loads_mat_files_and_maps_label_10_to_0(tmp_path: Path) -> None:
    written = write_svhn(tmp_path)
    ds = _create("svhn", verify_checksums=False, val_size=10)
    splits = ds.load(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 25)
    for split in (splits.train, splits.val, splits.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == (3, 32, 32) and split.x.is_contiguous()
        assert 0 <= int(split.y.min()) and int(split.y.max()) <= 9
    x, y = written["test_x"], written["test_y"]
    assert splits.test.x[2, 1, 4, 9] == x[4, 9, 1, 2]  # image 2, green, row 4, column 9
    assert torch.equal(splits.test.x, torch.from_numpy(x).permute(3, 2, 0, 1))
    assert splits.test.y[:3].tolist() == [0, 1, 9]
    assert splits.test.y.tolist() == [0 if v == 10 else int(v) for v in y]
    full = TensorSplit(torch.from_numpy(written["train_x"]).permute(3, 2, 0, 1).contiguous(),
                       torch.tensor([0 if v == 10 else int(v) for v in written["train_y"]]))
    exp_train, exp_val = hold_out(full, 10, 0)
    assert torch.equal(splits.train.x, exp_train.x) and torch.equal(splits.val.y, exp_val.y)
    assert not _rows(splits.train) & _rows(splits.val)


def test_svhn_missing_checksum_and_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as exc:
        _create("svhn", verify_checksums=False).load(tmp_path, seed=0)
    assert str(tmp_path / "svhn") in _one_line_error(exc)
    write_svhn(tmp_path)
    with pytest.raises(DataNotFoundError) as exc:
        _create("svhn", val_size=10).load(tmp_path, seed=0)
    assert "checksum mismatch" in _one_line_error(exc) and "train_32x32.mat" in str(exc.value)
    test_file = tmp_path / "svhn" / "test_32x32.mat"
    blob = test_file.read_bytes()
    for damaged in (blob[: len(blob) // 3], b"MATLAB? no." * 40, b""):
        test_file.write_bytes(damaged)
        with pytest.raises(DataNotFoundError) as exc:
            _create("svhn", verify_checksums=False, val_size=10).load(tmp_path, seed=0)
        assert str(tmp_path / "svhn") in _one_line_error(exc)
    test_file.unlink()
    with pytest.raises(DataNotFoundError) as exc:
        _create("svhn", verify_checksums=False, val_size=10).load(tmp_path, seed=0)
    assert _one_line_error(exc) == f"no SVHN data in {tmp_path / 'svhn'} (missing test_32x32.mat)"


# ----------------------------------------------------------------------------- Tiny-ImageNet
def test_tinyimagenet_loads_the_standard_tree(tmp_path: Path) -> None:
    folder = write_tiny(tmp_path)
    ds = _create("tinyimagenet", val_size=2)
    splits = ds.load(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 6)
    for split in (splits.train, splits.val, splits.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == (3, 64, 64)
    # test split = the labelled val/ images, in val_annotations.txt order, labels by wnids.txt line
    assert splits.test.y.tolist() == [2, 0, 1, 1, 0, 2]
    for i in range(6):
        assert torch.equal(splits.test.x[i], _decoded(folder / "val" / "images" / f"val_{i}.JPEG"))
    gray = splits.test.x[4]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(splits.test.x[0][0], splits.test.x[0][1])  # colour images stay colour
    # train: class folders in wnids.txt order, file names sorted; then hold_out
    paths = [(folder / "train" / w / "images" / f"{w}_{i}.JPEG", label)
             for label, w in enumerate(TINY_WNIDS) for i in range(4)]
    full = TensorSplit(torch.stack([_decoded(p) for p, _ in paths]), torch.tensor([lab for _, lab in paths]))
    exp_train, exp_val = hold_out(full, 2, 0)
    assert torch.equal(splits.train.x, exp_train.x) and torch.equal(splits.train.y, exp_train.y)
    assert torch.equal(splits.val.x, exp_val.x) and torch.equal(splits.val.y, exp_val.y)
    assert not _rows(splits.train) & _rows(splits.val)
    assert set(torch.cat([splits.train.y, splits.val.y]).tolist()) == {0, 1, 2}


def test_tinyimagenet_cache_is_written_reused_and_invalidated(tmp_path: Path, monkeypatch) -> None:
    import robench_plugins.datasets.tinyimagenet as tiny

    folder = write_tiny(tmp_path)
    cache = folder / "robench-cache-v1.pt"
    _create("tinyimagenet", val_size=2, cache=False).load(tmp_path, seed=0)
    assert not cache.exists()
    ds = _create("tinyimagenet", val_size=2)
    first = ds.load(tmp_path, seed=0)
    assert cache.is_file() and not list(folder.glob(".robench-cache-v1.pt.*"))  # atomic: no temp left
    stored = torch.load(cache, weights_only=True)
    assert torch.equal(stored["test_x"], first.test.x)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the JPEGs despite a valid cache")

    with monkeypatch.context() as m:
        m.setattr(tiny, "_decode", no_decoding)
        second = ds.load(tmp_path, seed=0)
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)

    # one image fewer: the cache no longer matches and is rebuilt
    (folder / "train" / "n01111111" / "images" / "n01111111_0.JPEG").unlink()
    third = ds.load(tmp_path, seed=0)
    assert len(third.train) + len(third.val) == 11
    assert torch.load(cache, weights_only=True)["train_x"].shape[0] == 11
    with monkeypatch.context() as m:
        m.setattr(tiny, "_decode", no_decoding)
        assert torch.equal(ds.load(tmp_path, seed=0).train.x, third.train.x)

    # same number of files, but another one: the listing's digest catches it
    (folder / "train" / "n01111111" / "images" / "n01111111_1.JPEG").unlink()
    write_jpeg(folder / "train" / "n01111111" / "images" / "n01111111_9.JPEG", np.random.default_rng(7))
    fourth = _create("tinyimagenet", val_size=0).load(tmp_path, seed=0)
    new = _decoded(folder / "train" / "n01111111" / "images" / "n01111111_9.JPEG")
    assert len(fourth.train) == 11 and any(torch.equal(img, new) for img in fourth.train.x)
    third = ds.load(tmp_path, seed=0)

    # the cache holds the whole training set: the seed still picks the validation split
    other_seed = next(s for s in (ds.load(tmp_path, seed=k) for k in (1, 2, 3))
                      if not torch.equal(s.val.x, third.val.x))  # StopIteration fails the test
    assert _rows(other_seed.train) | _rows(other_seed.val) == _rows(third.train) | _rows(third.val)

    # a torn cache file is ignored and replaced, never an error
    cache.write_bytes(cache.read_bytes()[:1000])
    assert torch.equal(ds.load(tmp_path, seed=0).test.x, third.test.x)
    assert torch.load(cache, weights_only=True)["test_x"].shape[0] == 6


@pytest.mark.parametrize(
    "damage", ["no-folder", "no-wnids", "no-class-folder", "no-val-image", "bad-jpeg", "bad-annotation"]
)
def test_tinyimagenet_missing_or_damaged_files_give_one_line(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "tiny-imagenet-200"
    if damage != "no-folder":
        write_tiny(tmp_path, train_per_class=2)
    expect = str(folder)
    if damage == "no-wnids":
        (folder / "wnids.txt").unlink()
        expect = "wnids.txt"
    elif damage == "no-class-folder":
        for p in (folder / "train" / "n05555555").rglob("*"):
            if p.is_file():
                p.unlink()
        (folder / "train" / "n05555555" / "images").rmdir()
        expect = "train/n05555555/images"
    elif damage == "no-val-image":
        (folder / "val" / "images" / "val_3.JPEG").unlink()
        expect = "val/images/val_3.JPEG"
    elif damage == "bad-jpeg":
        (folder / "train" / "n01111111" / "images" / "n01111111_1.JPEG").write_bytes(b"\xff\xd8\xff not really")
        expect = "n01111111_1.JPEG"
    elif damage == "bad-annotation":
        with (folder / "val" / "val_annotations.txt").open("a") as fh:
            fh.write("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
        expect = "val_annotations.txt line 7"
    with pytest.raises(DataNotFoundError) as exc:
        _create("tinyimagenet", val_size=1).load(tmp_path, seed=0)
    message = _one_line_error(exc)
    assert expect in message and "Tiny-ImageNet" in message


def test_val_size_larger_than_the_training_set_is_a_config_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match="val_size"):
        _create("cifar10", verify_checksums=False, val_size=100).load(tmp_path, seed=0)


# ----------------------------------------------------------------------------- augmentation
def _crops(x: torch.Tensor, padding: int) -> set[bytes]:
    """Every crop of ``x`` (C, H, W) zero-padded by ``padding``, as bytes."""
    _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    return {
        padded[:, i : i + h, j : j + w].numpy().tobytes()
        for i in range(2 * padding + 1)
        for j in range(2 * padding + 1)
    }


@pytest.mark.parametrize(
    "name, flips", [("cifar10", True), ("cifar100", True), ("svhn", False), ("tinyimagenet", True)]
)
def test_augment_crops_and_flips_only_where_it_should(name: str, flips: bool) -> None:
    ds = _create(name)
    c, h, w = ds.input_shape
    image = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(1))  # no symmetry at all
    batch = image.repeat(200, 1, 1, 1)
    out = ds.augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, ds.augment(batch, torch.Generator().manual_seed(0)))  # reproducible
    assert not torch.equal(out, ds.augment(batch, torch.Generator().manual_seed(1)))
    plain, mirrored = _crops(image[0], 4), _crops(image[0].flip(2), 4)
    assert not plain & mirrored
    outs = [o.numpy().tobytes() for o in out]
    n_plain = sum(o in plain for o in outs)
    n_mirrored = sum(o in mirrored for o in outs)
    assert n_plain + n_mirrored == len(outs)  # every output is a padded crop, maybe mirrored
    assert len(set(outs)) > 20  # the crop offset varies
    if flips:
        assert 60 <= n_mirrored <= 140  # about half
    else:
        assert n_mirrored == 0  # a mirrored digit is another symbol
