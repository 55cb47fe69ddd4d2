"""MNIST and Fashion-MNIST: idx files in both layouts, decompression into the cache,
checksums, splits; the real Fashion-MNIST files where Debian's package installed them.

Test-written idx files are random images, so they fail the official checksums: tests
that read them turn ``verify_checksums`` off, and one test shows that they are refused
with it on.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from dataset_files import IDX_FILES, write_idx

from robench.api.errors import DataNotFoundError
from robench.api.threat import ThreatModel
from robench.core.datasets import load_data
from robench.core.registry import get_registry

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL = all((SYSTEM / f"{name}.gz").is_file() for name in IDX_FILES)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason="Debian's dataset-fashion-mnist is not installed")

UNCHECKED = {"verify_checksums": False, "val_size": 10}


def _dataset(name: str, **params):
    return get_registry("dataset").create(name, params)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """robench's cache in a temp folder; no test touches the real one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ROBENCH_DATA", raising=False)
    return tmp_path / "xdg-cache" / "robench" / "data"


def _check_splits(splits, written: dict[str, np.ndarray], val_size: int) -> None:
    n_train = len(written["train_y"])
    assert len(splits.train) == n_train - val_size and len(splits.val) == val_size
    assert splits.train.x.dtype == torch.uint8 and tuple(splits.train.x.shape[1:]) == (1, 28, 28)
    assert torch.equal(splits.test.x[:, 0], torch.from_numpy(written["test_x"]))
    assert torch.equal(splits.test.y, torch.from_numpy(written["test_y"]).long())
    # train + val are the training set, nothing lost or repeated
    both = torch.cat([splits.train.y, splits.val.y]).sort().values
    assert torch.equal(both, torch.from_numpy(written["train_y"]).long().sort().values)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_layout_is_read_in_place(tmp_path: Path, cache: Path, name: str, folder: str) -> None:
    written = write_idx(tmp_path / "data" / folder / "raw", gz=False)
    splits, used = load_data(_dataset(name, **UNCHECKED), name, tmp_path / "data")
    assert used == tmp_path / "data"
    _check_splits(splits, written, 10)
    assert not cache.exists()  # nothing to decompress


@pytest.mark.parametrize("layout", ["flat", "torchvision-gz"])
def test_gzipped_files_are_decompressed_once_into_the_cache(tmp_path: Path, cache: Path, layout: str) -> None:
    source = tmp_path / "data" if layout == "flat" else tmp_path / "data" / "MNIST" / "raw"
    written = write_idx(source, gz=True)
    splits, _ = load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")
    _check_splits(splits, written, 10)
    raw = cache / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(IDX_FILES)
    assert (raw / "train-images-idx3-ubyte").read_bytes() == gzip.decompress((source / "train-images-idx3-ubyte.gz").read_bytes())
    stamps = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamps  # reused, not rewritten
    # a new copy of the source is decompressed again
    for name in IDX_FILES:
        (source / f"{name}.gz").unlink()
    rewritten = write_idx(source, gz=True, seed=1)
    splits, _ = load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")
    assert torch.equal(splits.test.x[:, 0], torch.from_numpy(rewritten["test_x"]))


def test_a_touched_cache_copy_is_decompressed_again(tmp_path: Path, cache: Path) -> None:
    written = write_idx(tmp_path / "data", gz=True)
    load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")
    copy = cache / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x09")
    splits, _ = load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")
    assert torch.equal(splits.test.y, torch.from_numpy(written["test_y"]).long())


def test_an_unwritable_cache_falls_back_to_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    written = write_idx(tmp_path / "data", gz=True)
    with pytest.warns(UserWarning, match="temporary folder"):
        splits, _ = load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")
    _check_splits(splits, written, 10)


def test_files_that_are_not_the_official_ones_are_refused(tmp_path: Path) -> None:
    write_idx(tmp_path / "data", gz=True)
    with pytest.raises(DataNotFoundError) as info:
        load_data(_dataset("mnist", val_size=10), "mnist", tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert f"checksum mismatch for {tmp_path / 'data' / 'train-images-idx3-ubyte.gz'}" in message
    assert "6bbc9ace898e44ae57da46a324031adb" in message and "verify_checksums=false" in message


def test_incomplete_folder_names_the_missing_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "data", gz=True)
    (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"incomplete MNIST data in .*data \(missing t10k-labels-idx1-ubyte.gz\)"):
        load_data(_dataset("mnist", **UNCHECKED), "mnist", tmp_path / "data")


@pytest.mark.parametrize("damage", ["not-gzip", "truncated-gzip", "truncated-idx", "bad-magic", "label-11"])
def test_damaged_files_give_one_line(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "data"
    write_idx(folder, gz=damage.endswith("gzip") or damage == "not-gzip")
    if damage == "not-gzip":
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    elif damage == "truncated-gzip":
        data = (folder / "train-images-idx3-ubyte.gz").read_bytes()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    elif damage == "truncated-idx":
        data = (folder / "train-images-idx3-ubyte").read_bytes()
        (folder / "train-images-idx3-ubyte").write_bytes(data[:-100])
    elif damage == "bad-magic":
        data = (folder / "t10k-labels-idx1-ubyte").read_bytes()
        (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + data[4:])
    else:
        data = bytearray((folder / "train-labels-idx1-ubyte").read_bytes())
        data[8] = 11
        (folder / "train-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(DataNotFoundError) as info:
        load_data(_dataset("mnist", **UNCHECKED), "mnist", folder)
    assert "\n" not in str(info.value) and "MNIST" in str(info.value)


def test_threat_models_normalisation_and_augmentation() -> None:
    fashion, mnist = _dataset("fashion-mnist"), _dataset("mnist")
    assert fashion.threat_model == ThreatModel("Linf", "0.1") and fashion.threat_model.value == pytest.approx(0.1)
    assert mnist.threat_model.eps == "0.3" and mnist.threat_model.value == pytest.approx(0.3)
    assert (fashion.mean, fashion.std, mnist.mean, mnist.std) == ((0.2860,), (0.3530,), (0.1307,), (0.3081,))
    assert (_dataset("mnist", normalize=False).mean, _dataset("mnist", normalize=False).std) == ((0.0,), (1.0,))
    x = torch.rand(16, 1, 28, 28)
    assert fashion.augment(x) is x  # no augmentation by default
    g = torch.Generator().manual_seed(0)
    cropped = _dataset("fashion-mnist", random_crop=2).augment(x, g)
    assert cropped.shape == x.shape and not torch.equal(cropped, x)
    # a crop keeps a 24x24 window of the image wherever it lands, and never flips it
    for i in range(16):
        assert any(torch.equal(cropped[i, 0, 2:-2, 2:-2], x[i, 0, 2 - dy:26 - dy, 2 - dx:26 - dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))


def test_cli_trains_and_records_on_mnist_files(tmp_path: Path, results: Path) -> None:
    """A real `robench run` on idx files given with --data-root: the record says where they were."""
    write_idx(tmp_path / "data", n_train=120, n_test=40, gz=True)
    proc = run_cli(
        "run", "--data", "mnist", "--data-root", str(tmp_path / "data"), "--results-dir", str(results),
        "--set", "data.verify_checksums=false", "--set", "data.val_size=20", "--set", "train.epochs=1",
        "--set", "train.batch_size=32", "--attack", "fgsm", "--set", "eval.checks=false",
        env={"XDG_CACHE_HOME": str(tmp_path / "xdg")},
    )
    assert proc.returncode == 0, proc.stderr
    import json

    record = json.loads(next((results / "records" / "mnist" / "linf-0.3").glob("*.json")).read_text())
    assert record["data_dir"] == str(tmp_path / "data")
    assert record["arch"]["name"] == "trades-smallcnn" and record["arch"]["num_params"] == 312_202  # the preset's
    assert record["threat"] == {"norm": "Linf", "eps": "0.3", "eps_value": 0.3}


# ------------------------------------------------------------------ the real files
@pytest.fixture(scope="module")
def real_splits(tmp_path_factory: pytest.TempPathFactory):
    """The real Fashion-MNIST, found in the system folder and decompressed into a temp cache."""
    if not HAVE_REAL:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    cache_home = tmp_path_factory.mktemp("real-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache_home))
        mp.delenv("ROBENCH_DATA", raising=False)
        splits, used = load_data(_dataset("fashion-mnist"), "fashion-mnist")
    return splits, used, cache_home / "robench" / "data" / "FashionMNIST" / "raw"


@needs_real
def test_real_fashion_mnist_from_the_system_folder(real_splits) -> None:
    splits, used, raw = real_splits
    assert used == SYSTEM
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(IDX_FILES)
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 47_040_016
    assert (len(splits.train), len(splits.val), len(splits.test)) == (59_000, 1_000, 10_000)
    assert tuple(splits.test.x.shape) == (10_000, 1, 28, 28) and splits.test.x.dtype == torch.uint8
    assert torch.bincount(splits.test.y).tolist() == [1_000] * 10
    train_y = torch.cat([splits.train.y, splits.val.y])
    assert torch.bincount(train_y).tolist() == [6_000] * 10
    pixels = torch.cat([splits.train.x, splits.val.x]).double() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=5e-5)
    assert pixels.std().item() == pytest.approx(0.3530, abs=5e-5)


@needs_real
def test_a_training_subset_is_class_balanced_and_the_same_for_every_seed(real_splits) -> None:
    _, _, raw = real_splits
    root = raw.parent.parent
    full = torch.cat([real_splits[0].train.x, real_splits[0].val.x])
    subsets = []
    for seed in (0, 1):
        splits = _dataset("fashion-mnist", train_subset=10_000).load(root, seed)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (9_000, 1_000, 10_000)
        both = torch.cat([splits.train.y, splits.val.y])
        assert torch.bincount(both).tolist() == [1_000] * 10
        subsets.append(torch.cat([splits.train.x, splits.val.x]).flatten(1))
    key = lambda x: x.double() @ torch.linspace(1, 2, 784, dtype=torch.double)  # noqa: E731  an image's fingerprint
    assert torch.equal(key(subsets[0]).sort().values, key(subsets[1]).sort().values)  # the same 10,000 images
    assert torch.isin(key(subsets[0]), key(full.flatten(1))).all()
    with pytest.raises(Exception, match="data.train_subset: 60000 is not smaller than the 60000 training images"):
        _dataset("fashion-mnist", train_subset=60_000).load(root, 0)


@needs_real
def test_the_cache_is_found_before_the_system_folder(real_splits, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, raw = real_splits
    monkeypatch.setenv("XDG_CACHE_HOME", str(raw.parent.parent.parent.parent))
    _, used = load_data(_dataset("fashion-mnist", val_size=0), "fashion-mnist")
    assert used == raw.parent.parent


@needs_real
def test_a_real_copy_with_one_altered_byte_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in IDX_FILES:
        shutil.copy(SYSTEM / f"{name}.gz", copy)
    labels = bytearray(gzip.decompress((copy / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[5000] = (labels[5000] + 1) % 10  # one test label changed: still a valid idx file
    (copy / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    proc = run_cli(
        "run", "--data", "fashion-mnist", "--data-root", str(copy), "--results-dir", str(tmp_path / "results"),
        env={"XDG_CACHE_HOME": str(tmp_path / "xdg")},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"checksum mismatch for {copy / 't10k-labels-idx1-ubyte.gz'}" in lines[0]
    assert "15d484375f8d13e6eb1aabb0c3f46965" in lines[0]  # the official content's md5
    assert not (tmp_path / "results" / "records").exists()
