"""Writers of small datasets in their real on-disk formats, shared by the tests.

CIFAR as Python-2-style pickles, SVHN as MATLAB files, Tiny-ImageNet as a JPEG tree,
MNIST and Fashion-MNIST as idx files: what torchvision's readers and robench's loaders
meet in the wild.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

PER_BATCH = 20  # CIFAR images per written batch file


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as in the real CIFAR files.

    The official batches were pickled by Python 2: keys and numpy's raw buffers are py2
    strings, which torchvision reads with ``encoding="latin1"``.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _cifar_batch(
    rng: np.random.Generator, n: int, classes: int, label_key: bytes
) -> tuple[dict, np.ndarray, np.ndarray]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
    labels = rng.integers(0, classes, size=n)
    return {
        b"batch_label": b"a test batch",
        label_key: [int(v) for v in labels],
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }, data, labels


def write_cifar10(root: Path, seed: int = 0, per_batch: int = PER_BATCH) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(1, 6):
        batch, data, labels = _cifar_batch(rng, per_batch, 10, b"labels")
        write_py2_pickle(folder / f"data_batch_{i}", batch)
        xs.append(data)
        ys.append(labels)
    batch, test_x, test_y = _cifar_batch(rng, per_batch, 10, b"labels")
    write_py2_pickle(folder / "test_batch", batch)
    write_py2_pickle(folder / "batches.meta", {
        b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                         b"dog", b"frog", b"horse", b"ship", b"truck"],
        b"num_cases_per_batch": per_batch, b"num_vis": 3072,
    })
    return {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys), "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", 60), ("test", 30)):
        batch, data, labels = _cifar_batch(rng, n, 100, b"fine_labels")
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
        write_py2_pickle(folder / name, batch)
        out[f"{name}_x"], out[f"{name}_y"] = data, labels
    write_py2_pickle(folder / "meta", {
        b"fine_label_names": [b"class%d" % i for i in range(100)],
        b"coarse_label_names": [b"super%d" % i for i in range(20)],
    })
    return out


def write_svhn(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    from scipy.io import savemat

    folder = root / "svhn"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", 40), ("test", 25)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # the files are HWCN
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # 1..10; 10 is the digit 0
        y[:3, 0] = [10, 1, 9]
        savemat(folder / f"{name}_32x32.mat", {"X": x, "y": y})
        out[f"{name}_x"], out[f"{name}_y"] = x, y[:, 0]
    return out


TINY_WNIDS = ["n09999999", "n01111111", "n05555555"]  # not in sorted order, on purpose


def write_jpeg(path: Path, rng: np.random.Generator, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # smooth content, so that JPEG keeps it recognisable
    base = rng.integers(0, 256, size=(8, 8, 1 if gray else 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    Image.fromarray(img[:, :, 0] if gray else img, "L" if gray else "RGB").save(path, "JPEG", quality=95)


def write_tiny(root: Path, train_per_class: int = 4, seed: int = 0) -> Path:
    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for wnid in TINY_WNIDS:
        for i in range(train_per_class):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, gray=(wnid, i) == ("n01111111", 2))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # present in the real tree
    lines = []
    for i, wnid in enumerate(["n05555555", "n09999999", "n01111111", "n01111111", "n09999999", "n05555555"]):
        write_jpeg(folder / "val" / "images" / f"val_{i}.JPEG", rng, gray=i == 4)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (folder / "test" / "images").mkdir(parents=True)  # unlabelled official test: ignored
    write_jpeg(folder / "test" / "images" / "test_0.JPEG", rng)
    return folder


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of LeCun's MNIST files: two zero bytes, the type code (0x08 =
    unsigned byte), the number of dimensions, each dimension as a big-endian int32, then
    the data in C order."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.tobytes()


def write_idx(folder: Path, n_train: int = 60, n_test: int = 30, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-style files in ``folder`` (gzipped, as distributed, or not).

    Every class appears in both splits (labels cycle 0..9 in a shuffled order)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out
