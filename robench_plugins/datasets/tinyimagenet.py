"""Tiny-ImageNet: 200 ImageNet classes at 64x64, from the standard ``tiny-imagenet-200`` tree.

Layout under ``ROOT/tiny-imagenet-200/`` (the extracted official zip):

* ``wnids.txt``: the 200 WordNet ids, one a line; label ``i`` is the id on line ``i``.
* ``train/<wnid>/images/*.JPEG``: 500 training images per class (100,000).
* ``val/images/*.JPEG`` and ``val/val_annotations.txt`` (tab-separated: file name, wnid,
  bounding box): 50 labelled images per class (10,000). **This labelled validation set
  is robench's test split**, as in the literature: the official ``test/`` images have no
  published labels and are ignored. robench's own validation split is held out of
  ``train/`` (``val_size``).

Images are decoded with PIL and converted to RGB (some are grayscale). Decoding 110,000
JPEGs takes a while, so the decoded uint8 tensors are cached in one file beside the data,
``robench-cache-v1.pt`` (hyperparameter ``cache``). The cache remembers which files it
was built from (their number and a digest of their names and labels) and is rebuilt when
that listing changes; a file edited in place under the same name is not noticed (delete
the cache file).
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robench.api import Dataset, DataSplits, TensorSplit
from robench.api.data import random_crop_flip, uint8_nchw
from robench.api.errors import DataNotFoundError, UserError
from robench.api.io import atomic_write_bytes
from robench.api.params import param
from robench.api.threat import ThreatModel
from robench_plugins.datasets._common import one_line, split_off_val

TITLE = "Tiny-ImageNet"
FOLDER = "tiny-imagenet-200"
CACHE_NAME = "robench-cache-v1.pt"
CACHE_VERSION = 1
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4553bd6b337"
NUM_CLASSES = 200
SIZE = 64


@dataclass(frozen=True)
class TinyImageNetParams:
    val_size: int = param(
        1000, ge=0, help="images held out from the training set (fixed by the seed) for checkpoint selection"
    )
    cache: bool = param(
        True,
        help=f"keep the decoded images in {FOLDER}/{CACHE_NAME} and reuse them while the "
        "image files stay the same",
    )


@dataclass(frozen=True)
class _Listing:
    """The image files of both splits, with their labels, in a fixed order."""

    wnids: list[str]
    train: list[tuple[str, int]]  # paths relative to the dataset folder
    test: list[tuple[str, int]]

    def signature(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for name, items in (("train", self.train), ("test", self.test)):
            for rel, label in items:
                digest.update(f"{name}\t{rel}\t{label}\n".encode())
        return {
            "version": CACHE_VERSION,
            "files": len(self.train) + len(self.test),
            "digest": digest.hexdigest(),
        }


def _missing(folder: Path, what: str) -> DataNotFoundError:
    return DataNotFoundError(f"no {TITLE} data in {folder} (missing {what})")


def _damaged(folder: Path, what: str) -> DataNotFoundError:
    return DataNotFoundError(f"damaged {TITLE} data in {folder} ({what})")


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith((".jpeg", ".jpg"))


def _list_files(folder: Path) -> _Listing:
    if not folder.is_dir():
        raise DataNotFoundError(f"no {TITLE} data in {folder} (folder missing)")
    try:
        wnids_file = folder / "wnids.txt"
        if not wnids_file.is_file():
            raise _missing(folder, "wnids.txt")
        wnids = [line.strip() for line in wnids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not wnids or len(wnids) > NUM_CLASSES or len(set(wnids)) != len(wnids):
            raise _damaged(folder, f"wnids.txt lists {len(wnids)} ids ({len(set(wnids))} distinct); "
                           f"expected up to {NUM_CLASSES} distinct ids")
        label_of = {wnid: i for i, wnid in enumerate(wnids)}

        train: list[tuple[str, int]] = []
        for label, wnid in enumerate(wnids):
            rel = f"train/{wnid}/images"
            if not (folder / rel).is_dir():
                raise _missing(folder, rel)
            names = sorted(n for n in os.listdir(folder / rel) if _is_jpeg(n))
            if not names:
                raise _missing(folder, f"images in {rel}")
            train.extend((f"{rel}/{n}", label) for n in names)

        annotations = folder / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise _missing(folder, "val/val_annotations.txt")
        if not (folder / "val" / "images").is_dir():
            raise _missing(folder, "val/images")
        present = set(os.listdir(folder / "val" / "images"))
        test: list[tuple[str, int]] = []
        for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in label_of:
                raise _damaged(folder, f"val/val_annotations.txt line {number}: "
                               f"expected 'file<TAB>wnid<TAB>...' with a wnid from wnids.txt")
            name = fields[0].strip()
            if name not in present:
                raise _missing(folder, f"val/images/{name}")
            test.append((f"val/images/{name}", label_of[fields[1].strip()]))
        if not test:
            raise _damaged(folder, "val/val_annotations.txt lists no images")
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(folder, f"{type(exc).__name__}: {one_line(exc)}") from exc
    return _Listing(wnids, train, test)


def _decode(folder: Path, items: list[tuple[str, int]]) -> TensorSplit:
    """Decode the JPEGs (threads: PIL releases the GIL while decoding) into uint8 NCHW."""
    from PIL import Image

    out = np.empty((len(items), 3, SIZE, SIZE), dtype=np.uint8)

    def one(i: int) -> None:
        path = folder / items[i][0]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")  # some Tiny-ImageNet images are grayscale
        except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
            raise DataNotFoundError(
                f"cannot read {TITLE} image {path} ({type(exc).__name__}: {one_line(exc)})"
            ) from exc
        if rgb.size != (SIZE, SIZE):
            raise _damaged(folder, f"{items[i][0]} is {rgb.size[0]}x{rgb.size[1]}, expected {SIZE}x{SIZE}")
        out[i] = np.asarray(rgb).transpose(2, 0, 1)

    workers = max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(one, range(len(items)), chunksize=256):
            pass
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return TensorSplit(uint8_nchw(out, "NCHW"), y)


def _read_cache(
    path: Path, signature: dict[str, Any], sizes: tuple[int, int]
) -> tuple[TensorSplit, TensorSplit] | None:
    """The cached splits, or None if the cache is absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign cache is never fatal: decode the images again
        return None
    if not isinstance(blob, dict) or blob.get("signature") != signature:
        return None
    splits = []
    for name, n in zip(("train", "test"), sizes):
        x, y = blob.get(f"{name}_x"), blob.get(f"{name}_y")
        if not (
            isinstance(x, Tensor) and isinstance(y, Tensor)
            and x.dtype == torch.uint8 and tuple(x.shape) == (n, 3, SIZE, SIZE)
            and y.dtype == torch.int64 and tuple(y.shape) == (n,)
        ):
            return None
        splits.append(TensorSplit(x, y))
    return splits[0], splits[1]


def _write_cache(path: Path, signature: dict[str, Any], train: TensorSplit, test: TensorSplit) -> None:
    buf = io.BytesIO()
    torch.save(
        {"signature": signature, "train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y},
        buf,
    )
    try:
        atomic_write_bytes(path, buf.getbuffer())
    except UserError as exc:  # a read-only data folder: run on, decode again next time
        warnings.warn(f"{TITLE} cache not written: {exc}", stacklevel=3)


class TinyImageNet(Dataset[TinyImageNetParams]):
    """Tiny-ImageNet: 100,000 train / 10,000 test (the labelled val/ set) images, 64x64, 200 classes."""

    Params = TinyImageNetParams
    num_classes = NUM_CLASSES
    input_shape = (3, SIZE, SIZE)
    # the commonly used per-channel mean / std of the Tiny-ImageNet training images
    mean = (0.4802, 0.4481, 0.3975)
    std = (0.2770, 0.2691, 0.2821)
    # Linf 8/255, as most robustness papers report on Tiny-ImageNet
    threat_model = ThreatModel("Linf", "8/255")

    def load(self, root: Path, seed: int) -> DataSplits:
        p = self.params
        folder = Path(root) / FOLDER
        listing = _list_files(folder)
        signature = listing.signature()
        cache_path = folder / CACHE_NAME
        cached = _read_cache(cache_path, signature, (len(listing.train), len(listing.test))) if p.cache else None
        if cached is not None:
            train, test = cached
        else:
            train, test = _decode(folder, listing.train), _decode(folder, listing.test)
            if p.cache:
                _write_cache(cache_path, signature, train, test)
        train, val = split_off_val(train, p.val_size, seed)
        return DataSplits(train=train, test=test, val=val)

    def fetch(self, root: Path) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        # extracts to ROOT/tiny-imagenet-200/; the 248 MB zip is removed afterwards
        download_and_extract_archive(URL, download_root=str(root), md5=MD5, remove_finished=True)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random 64x64 crop of the image zero-padded by 4 px, and a random horizontal flip."""
        return random_crop_flip(x, padding=4, flip=True, generator=generator)
