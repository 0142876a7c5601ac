"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60,000 train / 10,000 test grey 28x28 product photographs, 10 classes.

The four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``), each plain or gzipped (``.gz``), are read from the first folder that holds all four:

* ``data.root`` when set (and its ``FashionMNIST/raw``, torchvision's layout);
* else Debian's ``dataset-fashion-mnist`` package folder, :data:`DEBIAN_ROOT`, then the echos cache
  (``$ECHOS_DATA`` or ``~/.cache/echos/data``, ``FashionMNIST/raw``).

``data.download=true`` fetches the files through ``torchvision.datasets.FashionMNIST`` (which checks their md5)
into ``data.root`` or the cache when no folder has them.  Like digits, the whole split is held in memory as uint8
``(N, 28, 28, 3)`` (three equal channels, so every model works unchanged) and normalised by the training split's
mean and std.  The official test split is the validation split: echos has no other held-out data.

The IDX format (LeCun's MNIST page): two zero bytes, a type byte (``0x08`` = unsigned byte), the number of
dimensions, each dimension as a big-endian int32, then the data in C order.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np

from .sources import DataNotFound

__all__ = ["DEBIAN_ROOT", "FILES", "CLASSES", "read_idx", "idx_count", "find_fashion_mnist", "load_fashion_mnist",
           "count_fashion_mnist"]

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_UBYTE = 0x08
_HOW_TO_GET = ("install Debian's package (apt-get install dataset-fashion-mnist), point data.root at a folder with "
               "the four idx files (plain or .gz), or set data.download=true where a network exists")


def _bad(path: Path, why: str) -> DataNotFound:
    return DataNotFound("data.root", str(path.parent), f"{path}: {why}")


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file (plain or gzipped) as a uint8 array with ``ndim`` dimensions."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise _bad(path, f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise _bad(path, "not an IDX file (it must start with two zero bytes)")
    if raw[2] != _UBYTE or raw[3] != ndim:
        raise _bad(path, f"IDX type 0x{raw[2]:02x} with {raw[3]} dimensions; expected unsigned bytes (0x08) "
                         f"with {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _bad(path, "truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise _bad(path, f"holds {len(raw) - header} data bytes; its header {shape} says {size}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _file(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(_file(folder, n) for pair in FILES.values() for n in pair)


def find_fashion_mnist(root: Optional[Path], cache: Path, download: bool) -> Path:
    """The folder holding the four files (see the module docstring), downloading them if asked and needed."""
    bases = [Path(root)] if root is not None else [DEBIAN_ROOT, cache]
    folders = [f for b in bases for f in (b, b / "FashionMNIST" / "raw")]
    for folder in folders:
        if _complete(folder):
            return folder
    target = Path(root) if root is not None else cache
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            for train in (True, False):
                FashionMNIST(str(target), train=train, download=True)
        except Exception as e:  # network errors, bad archives: one line, naming where
            reason = (str(e).splitlines() or [""])[0]
            raise DataNotFound("data.root", str(target), f"downloading Fashion-MNIST into {target} failed "
                                                         f"({type(e).__name__}: {reason})") from None
        if _complete(target / "FashionMNIST" / "raw"):
            return target / "FashionMNIST" / "raw"
    where = ", ".join(str(f) for f in folders)
    missing = [n for n in (n for pair in FILES.values() for n in pair) if not _file(folders[0], n)]
    raise DataNotFound("data.root", str(root) if root is not None else None,
                       f"Fashion-MNIST not found in {where} (missing in {folders[0]}: {', '.join(missing)}[.gz]); "
                       f"{_HOW_TO_GET}")


def load_fashion_mnist(root: Optional[Path], cache: Path, download: bool = False) -> tuple[tuple, tuple, tuple]:
    """((train_x, train_y), (val_x, val_y), classes): uint8 (N, 28, 28, 3) images and int64 labels."""
    folder = find_fashion_mnist(root, cache, download)
    splits = []
    for images_name, labels_name in FILES.values():
        ipath, lpath = _file(folder, images_name), _file(folder, labels_name)
        x, y = read_idx(ipath, 3), read_idx(lpath, 1)
        if len(x) != len(y):
            raise _bad(ipath, f"{len(x)} images but {lpath.name} has {len(y)} labels")
        if len(y) and int(y.max()) >= len(CLASSES):
            raise _bad(lpath, f"label {int(y.max())} out of range (Fashion-MNIST has {len(CLASSES)} classes)")
        splits.append((np.repeat(x[..., None], 3, axis=-1), y.astype(np.int64)))
    return splits[0], splits[1], CLASSES


def idx_count(path: Path) -> int:
    """The first dimension of an IDX file (plain or gzipped), read from its header only."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(8)
    except (OSError, EOFError) as e:
        raise _bad(path, f"cannot be read ({type(e).__name__})") from None
    if len(head) < 8 or head[:2] != b"\0\0" or head[2] != _UBYTE:
        raise _bad(path, "not an unsigned-byte IDX file")
    return int(np.frombuffer(head, dtype=">i4", count=1, offset=4)[0])


def count_fashion_mnist(root: Optional[Path], cache: Path, download: bool) -> tuple[int, int]:
    """(train, val) images, from the IDX headers (nothing else is read); the official counts when the files
    are missing and ``download`` would fetch them."""
    try:
        folder = find_fashion_mnist(root, cache, download=False)
    except DataNotFound:
        if download:
            return 60000, 10000
        raise
    counts = []
    for images_name, labels_name in FILES.values():
        n_img, n_lab = idx_count(_file(folder, images_name)), idx_count(_file(folder, labels_name))
        if n_img != n_lab:
            raise _bad(_file(folder, images_name), f"{n_img} images but {labels_name} has {n_lab} labels")
        counts.append(n_img)
    return counts[0], counts[1]
