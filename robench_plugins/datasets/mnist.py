"""MNIST and Fashion-MNIST: 28x28 grey images in the idx format, read by torchvision.

Both come as four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), usually gzipped. A data folder
may hold them in either of two layouts:

* torchvision's, ``ROOT/MNIST/raw/`` or ``ROOT/FashionMNIST/raw/`` (what
  ``robench data fetch`` writes), decompressed or gzipped;
* flat, ``ROOT/*-ubyte.gz`` (or decompressed), as Debian's ``dataset-fashion-mnist``
  package installs them in ``/usr/share/datasets/fashion-mnist/``, a folder robench
  searches after its own.

torchvision's idx reader cannot read gzip, so compressed or flat files are decompressed
once, atomically, into robench's cache in torchvision's layout
(``~/.cache/robench/data/FashionMNIST/raw/``, about 55 MB) and read from there; a stamp
beside them names the files they came from, so a changed source is decompressed again.

Integrity: the md5 of each decompressed file is compared with the official content
(``verify_checksums``, on by default), whatever the compression: Debian re-compressed
its copies, so the md5s of the ``.gz`` files, which torchvision checks when it
downloads, differ from the official ones although the data is the same.
"""
from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import json
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import torch
from torch import Tensor

from robench.api import Dataset, DataSplits, TensorSplit
from robench.api.data import data_cache, random_crop_flip
from robench.api.errors import DataNotFoundError
from robench.api.params import param
from robench.api.threat import ThreatModel
from robench_plugins.datasets._common import (
    PARSE_ERRORS,
    balanced_subset,
    checked_split,
    labels_tensor,
    one_line,
    split_off_val,
)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STAMP = ".robench-sources.json"
_READ_ERRORS: tuple[type[BaseException], ...] = (*PARSE_ERRORS, zlib.error)


@dataclass(frozen=True)
class IdxParams:
    val_size: int = param(
        1000, ge=0, help="images held out from the training set (fixed by the seed) for checkpoint selection"
    )
    train_subset: int | None = param(
        None, ge=1, hashed_at_default=False,
        help="use only this many training images, class-balanced and the same in every run (validation is "
        "held out of them); null: all 60,000",
    )
    verify_checksums: bool = param(
        True, help="compare the md5 of every decompressed file with the official one; false only checks that they exist"
    )
    random_crop: int = param(
        0, ge=0, le=14, help="pad by this many pixels and crop back to 28x28 at random; 0: no augmentation (the usual setting)"
    )
    normalize: bool = param(
        True, help="normalise inputs with the training-set mean and std inside the model; false feeds raw [0, 1] pixels"
    )


@dataclass(frozen=True)
class _Source:
    """Where the four files were found: their folder and suffix ("" or ".gz")."""

    folder: Path
    suffix: str

    def path(self, name: str) -> Path:
        return self.folder / (name + self.suffix)


class IdxDataset(Dataset[IdxParams]):
    """Shared by MNIST and Fashion-MNIST: layouts, decompression, checksums, splits."""

    Params = IdxParams
    num_classes = 10
    input_shape = (1, 28, 28)
    #: torchvision's class name, which is also its folder name under the data root
    torchvision_name: ClassVar[str]
    title: ClassVar[str]
    #: md5 of each decompressed file (the official content)
    md5: ClassVar[dict[str, str]]
    train_mean: ClassVar[tuple[float, ...]]
    train_std: ClassVar[tuple[float, ...]]

    def __init__(self, params: IdxParams | None = None) -> None:
        super().__init__(params)
        normalize = self.params.normalize
        self.mean = self.train_mean if normalize else (0.0,)
        self.std = self.train_std if normalize else (1.0,)

    # ------------------------------------------------------------------ finding
    def _layouts(self, root: Path) -> list[_Source]:
        raw = Path(root) / self.torchvision_name / "raw"
        return [_Source(raw, ""), _Source(raw, ".gz"), _Source(Path(root), ".gz"), _Source(Path(root), "")]

    def has_files(self, root: Path) -> bool:
        return any(s.path(f).is_file() for s in self._layouts(root) for f in FILES)

    def _source(self, root: Path) -> _Source:
        layouts = self._layouts(root)
        for source in layouts:
            if all(source.path(f).is_file() for f in FILES):
                return source
        best = max(layouts, key=lambda s: sum(s.path(f).is_file() for f in FILES))
        missing = [f + best.suffix for f in FILES if not best.path(f).is_file()]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataNotFoundError(f"incomplete {self.title} data in {best.folder} (missing {missing[0]}{more})")

    # ------------------------------------------------------------ decompressing
    def _prepared(self, root: Path, source: _Source, stack: ExitStack) -> tuple[Path, dict[str, Path]]:
        """A root in torchvision's layout holding the decompressed files, and each file's origin."""
        origins = {f: source.path(f) for f in FILES}
        if source == self._layouts(root)[0]:  # torchvision's layout, decompressed: read in place
            return Path(root), origins
        cache = data_cache()
        try:
            _materialise(source, cache / self.torchvision_name / "raw")
            return cache, origins
        except CacheUnwritable as exc:
            warnings.warn(
                f"cannot write {self.title} into the cache {cache} ({exc}); "
                "decompressing into a temporary folder at every load instead",
                stacklevel=3,
            )
        temporary = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="robench-idx-")))
        _materialise(source, temporary / self.torchvision_name / "raw")
        return temporary, origins

    def _verify(self, raw: Path, origins: dict[str, Path]) -> None:
        for name in FILES:
            got = _md5(raw / name)
            if got != self.md5[name]:
                raise DataNotFoundError(
                    f"checksum mismatch for {origins[name]}: not the official {self.title} {name} "
                    f"(md5 of its content {got}, expected {self.md5[name]}; data.verify_checksums=false skips this check)"
                )

    # ------------------------------------------------------------------ reading
    def _read(self, root: Path, train: bool, origin: Path) -> TensorSplit:
        import torchvision.datasets

        base = getattr(torchvision.datasets, self.torchvision_name)
        try:
            ds = _raw_only(base)(str(root), train=train, download=False)
            x = ds.data.unsqueeze(1).contiguous()
        except _READ_ERRORS as exc:
            raise DataNotFoundError(
                f"cannot read {self.title} data from {origin.parent} ({type(exc).__name__}: {one_line(exc)})"
            ) from exc
        if x.dtype != torch.uint8:
            raise DataNotFoundError(f"damaged {self.title} data in {origin.parent} (images are {x.dtype}, not uint8)")
        y = labels_tensor(ds.targets, self.num_classes, self.title, origin.parent)
        return checked_split(x, y, self.input_shape, self.title, origin.parent)

    def load(self, root: Path, seed: int) -> DataSplits:
        p = self.params
        source = self._source(Path(root))
        with ExitStack() as stack:
            try:
                prepared, origins = self._prepared(Path(root), source, stack)
            except _READ_ERRORS as exc:
                raise DataNotFoundError(
                    f"cannot decompress {self.title} data in {source.folder} ({type(exc).__name__}: {one_line(exc)})"
                ) from exc
            raw = prepared / self.torchvision_name / "raw"
            if p.verify_checksums:
                self._verify(raw, origins)
            train = self._read(prepared, True, origins["train-images-idx3-ubyte"])
            test = self._read(prepared, False, origins["t10k-images-idx3-ubyte"])
        train, val = split_off_val(balanced_subset(train, p.train_subset, self.num_classes), p.val_size, seed)
        return DataSplits(train=train, test=test, val=val)

    def fetch(self, root: Path) -> None:
        import torchvision.datasets

        # downloads the four .gz files (checking torchvision's md5s) and decompresses them
        getattr(torchvision.datasets, self.torchvision_name)(str(root), train=True, download=True)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """With ``random_crop`` > 0: a random 28x28 crop of the zero-padded image; never flipped."""
        pad = self.params.random_crop
        return random_crop_flip(x, padding=pad, flip=False, generator=generator) if pad else x


def _raw_only(base: type) -> type:
    """torchvision's class that reads the raw idx files only: its legacy ``processed/*.pt``
    files, which it would otherwise prefer, are ignored (robench verifies the raw files)."""

    class RawOnly(base):
        def _check_legacy_exist(self) -> bool:
            return False

    RawOnly.__name__ = RawOnly.__qualname__ = base.__name__  # torchvision's folder name
    return RawOnly


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> list[object] | None:
    """What identifies a file's current content cheaply: path, size, modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class CacheUnwritable(Exception):
    """The cache folder cannot take the decompressed files (read-only, full, no permission)."""


_UMASK = os.umask(0o22)
os.umask(_UMASK)
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _materialise(source: _Source, target: Path) -> None:
    """Decompress (or copy) the four files into ``target``, unless the stamp there shows
    they came from these very source files and were not touched since. Each file is written atomically;
    a folder that cannot be written raises CacheUnwritable, a damaged source its own error."""
    stamp_file = target / STAMP
    sources = {name: _stamp(source.path(name)) for name in FILES}
    try:
        done = json.loads(stamp_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = None
    if done == {name: [sources[name], _stamp(target / name)] for name in FILES}:
        return  # neither the sources nor the decompressed copies changed since
    for name in FILES:
        _write_atomic(target, name, functools.partial(_decompress, source, name))
    stamp = {name: [sources[name], _stamp(target / name)] for name in FILES}
    _write_atomic(target, STAMP, lambda out: out.write(json.dumps(stamp).encode()))


def _decompress(source: _Source, name: str, out: BinaryIO) -> None:
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source.path(name), "rb") as src:
        while block := src.read(1 << 20):
            out.write(block)


def _write_atomic(folder: Path, name: str, write: Callable[[BinaryIO], object]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        if isinstance(exc, (PermissionError, FileExistsError, NotADirectoryError)) or exc.errno in _WRITE_ERRNOS:
            raise CacheUnwritable(one_line(exc)) from exc
        raise
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the cache from other users
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, folder / name)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:  # a full disk, not a damaged source
            raise CacheUnwritable(one_line(exc)) from exc
        raise


class FashionMNIST(IdxDataset):
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60,000 train / 10,000 test grey 28x28
    images of clothing, 10 classes, 6,000 / 1,000 per class."""

    torchvision_name = "FashionMNIST"
    title = "Fashion-MNIST"
    md5 = {  # measured on the decompressed files of Debian's dataset-fashion-mnist
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    }
    # pixel mean and std of the 60,000 training images (the test images are not used)
    train_mean = (0.2860,)
    train_std = (0.3530,)
    # Linf 0.1, the usual budget of robustness papers on Fashion-MNIST
    threat_model = ThreatModel("Linf", "0.1")
    system_folders = ("/usr/share/datasets/fashion-mnist",)
    install_hint = "the Debian/Ubuntu package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`)"


class MNIST(IdxDataset):
    """MNIST (LeCun et al. 1998): 60,000 train / 10,000 test grey 28x28 handwritten digits."""

    torchvision_name = "MNIST"
    title = "MNIST"
    md5 = {  # the published md5s of the decompressed original files
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
    # the commonly used mean and std of the 60,000 training images
    train_mean = (0.1307,)
    train_std = (0.3081,)
    # Linf 0.3, the budget of Madry et al.'s MNIST challenge and TRADES
    threat_model = ThreatModel("Linf", "0.3")
