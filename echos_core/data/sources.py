"""Where images come from: one reader per data set, each returning uint8 arrays.

* ``digits``: scikit-learn's bundled handwritten digits (1797 images, 8x8, 17 grey
  levels), scaled to 0..255 and served as three equal channels (``in_chans`` stays 3,
  so every model and RandAugment work unchanged).  A stratified 80/20 split with a
  fixed seed: 1437 training and 360 validation images.  Images are upsampled to
  ``image_size`` by the transforms.
* ``cifar10`` / ``cifar100``: the standard python-pickle folders
  (``cifar-10-batches-py``, ``cifar-100-python``) read directly, exactly as
  torchvision reads them but without its md5 check of every file (which also makes
  small hand-written sets in the same format load).  ``data.download=true`` fetches
  the archive through ``torchvision.datasets.CIFAR10/100``, which verifies the
  archive's md5.
* ``imagefolder``: ``torchvision.datasets.ImageFolder`` over ``root/train`` and
  ``root/val`` (or ``root/validation``): the ImageNet / Imagenette layout.
* ``fake``: learnable random images, a fixed seed: each class has its own smooth
  colour pattern (a random 4x4 RGB grid, upsampled), each image adds Gaussian noise
  of standard deviation 48 grey levels.  ``fake_size`` training images,
  ``fake_size // 4`` validation images, labels cycling through the classes.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import ConfigError

__all__ = ["DataNotFound", "ArrayDataset", "load_digits", "load_fake", "load_cifar", "imagefolder_dirs", "CIFAR",
           "count_cifar", "count_imagefolder"]

DIGITS_SEED = 0
FAKE_SEED = 0


class DataNotFound(ConfigError):
    """The data a configuration points at is not on disk; ``str(err)`` is one line."""


class ArrayDataset(torch.utils.data.Dataset):
    """Images held in memory as uint8 ``(N, H, W, C)``; yields ``(transform(CxHxW uint8), int label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None,
                 classes: Optional[tuple] = None, coords: Optional[np.ndarray] = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform
        self.classes = classes
        self.coords = coords  # optional per-image provenance (embedded: photo, row, column)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i].permute(2, 0, 1)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: uint8 images ``(N, C, H, W)`` and int64 labels (what the resident path needs)."""
        return self.images.permute(0, 3, 1, 2), self.labels

    def uint8_view(self) -> Optional["ArrayDataset"]:
        """The same images through the transform's uint8 stage (``transform.to_uint8``: no normalisation), or
        None when the transform has none or does more after normalising (random erasing)."""
        if not getattr(self.transform, "uint8_ok", False):
            return None
        view = copy.copy(self)
        view.transform = self.transform.to_uint8
        return view

    def subset(self, indices) -> "ArrayDataset":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        coords = None if self.coords is None else self.coords[idx.numpy()]
        return ArrayDataset(self.images[idx].numpy(), self.labels[idx].numpy(), self.transform, self.classes, coords)

    def resize_(self, size: int, chunk: int = 1024) -> "ArrayDataset":
        """Resize every image to ``size`` x ``size`` once, in place (bilinear, antialiased)."""
        if tuple(self.images.shape[1:3]) != (size, size):
            from .transforms import resize_uint8

            self.images = torch.cat([resize_uint8(part.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
                                     for part in self.images.split(chunk)]).contiguous()
        return self

    def channel_stats(self) -> tuple[tuple, tuple]:
        """Per-channel mean and std in [0, 1] units, rounded to 4 decimals."""
        x = self.images.reshape(-1, self.images.shape[-1]).double().div_(255.0)
        return tuple(round(v, 4) for v in x.mean(0).tolist()), tuple(round(v, 4) for v in x.std(0).tolist())


# --------------------------------------------------------------------------- digits


def load_digits() -> tuple[tuple, tuple, tuple]:
    """((train_x, train_y), (val_x, val_y), classes) from scikit-learn's digits."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None].repeat(3, axis=-1)
    y = d.target.astype(np.int64)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.2, stratify=y, random_state=DIGITS_SEED)
    return (xtr, ytr), (xva, yva), tuple(str(c) for c in range(10))


# --------------------------------------------------------------------------- fake


def load_fake(n_train: int, n_classes: int, size: int) -> tuple[tuple, tuple, tuple]:
    """Deterministic learnable random images (see the module docstring)."""
    rng = np.random.default_rng(FAKE_SEED)
    grids = torch.from_numpy(rng.uniform(32, 224, size=(n_classes, 3, 4, 4)).astype(np.float32))
    protos = torch.nn.functional.interpolate(grids, size=(size, size), mode="bilinear", align_corners=False)
    protos = protos.permute(0, 2, 3, 1).numpy()  # (classes, H, W, 3)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % n_classes
        noise = rng.normal(0.0, 48.0, size=(n, size, size, 3)).astype(np.float32)
        return np.clip(np.round(protos[y] + noise), 0, 255).astype(np.uint8), y.astype(np.int64)

    return make(n_train), make(max(1, n_train // 4)), tuple(f"class{c}" for c in range(n_classes))


# --------------------------------------------------------------------------- CIFAR

CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "val": ["test_batch"], "meta": ("batches.meta", "label_names"), "classes": 10,
                "pretty": "CIFAR-10"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "val": ["test"],
                 "meta": ("meta", "fine_label_names"), "classes": 100, "pretty": "CIFAR-100"},
}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64)
    return x, y


def load_cifar(name: str, root: Path, download: bool) -> tuple[tuple, tuple, tuple]:
    """((train_x, train_y), (val_x, val_y), classes) from the python-pickle CIFAR folder under ``root``."""
    spec = CIFAR[name]
    folder = Path(root) / spec["folder"]
    files = [folder / f for f in spec["train"] + spec["val"] + [spec["meta"][0]]]
    if download and not all(f.is_file() for f in files):
        from torchvision.datasets import CIFAR10, CIFAR100

        try:
            (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=True, download=True)
        except Exception as e:  # network errors, bad archives: one line, naming where
            reason = (str(e).splitlines() or [""])[0]
            raise DataNotFound("data.root", str(root),
                               f"downloading {spec['pretty']} into {root} failed ({type(e).__name__}: {reason})") from None
    _require_cifar(name, root)
    splits = []
    for split in ("train", "val"):
        parts = [_read_batch(folder / f) for f in spec[split]]
        splits.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    with open(folder / spec["meta"][0], "rb") as f:
        classes = tuple(pickle.load(f, encoding="latin1")[spec["meta"][1]])
    if len(classes) != spec["classes"]:
        raise DataNotFound("data.root", str(root), f"{folder / spec['meta'][0]} lists {len(classes)} classes, "
                                                   f"{spec['pretty']} has {spec['classes']}")
    return splits[0], splits[1], classes


def _require_cifar(name: str, root: Path) -> Path:
    """The CIFAR folder under ``root``, or a one-line error naming the missing files."""
    spec = CIFAR[name]
    folder = Path(root) / spec["folder"]
    missing = [f for f in spec["train"] + spec["val"] + [spec["meta"][0]] if not (folder / f).is_file()]
    if missing:
        raise DataNotFound("data.root", str(root),
                           f"{spec['pretty']} not found at {folder} (missing {', '.join(missing)}); "
                           f"data.download=true fetches it")
    return folder


def count_cifar(name: str, root: Path, download: bool) -> tuple[int, int]:
    """(train, val) images of the CIFAR folder under ``root`` (its label lists only); the official counts when
    the files are missing and ``download`` would fetch them."""
    try:
        folder = _require_cifar(name, root)
    except DataNotFound:
        if download:
            return 50000, 10000
        raise
    counts = []
    for split in ("train", "val"):
        n = 0
        for f in CIFAR[name][split]:
            try:
                n += len(_read_batch(folder / f)[1])
            except Exception as e:  # not a CIFAR batch: one line, naming the file
                raise DataNotFound("data.root", str(root), f"{folder / f} is not a {CIFAR[name]['pretty']} "
                                                           f"batch file ({type(e).__name__})") from None
        counts.append(n)
    return counts[0], counts[1]


# --------------------------------------------------------------------------- ImageFolder


def imagefolder_dirs(root: Path) -> tuple[Path, Path]:
    """``root/train`` and ``root/val`` (or ``root/validation``), or a one-line error."""
    root = Path(root)
    train = root / "train"
    val = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
    if not train.is_dir() or val is None:
        what = "train/" if not train.is_dir() else "val/ (or validation/)"
        raise DataNotFound("data.root", str(root),
                           f"no {what} folder at {root}; imagefolder needs root/train/<class>/* and root/val/<class>/*")
    return train, val


def count_imagefolder(root: Path) -> tuple[int, int]:
    """(train, val) images of an ImageFolder tree, from its file index (no image is opened)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    counts, classes = [], []
    for d in imagefolder_dirs(root):
        try:
            found, class_to_idx = find_classes(str(d))
            counts.append(len(make_dataset(str(d), class_to_idx, extensions=IMG_EXTENSIONS)))
        except FileNotFoundError as e:  # no class folder, or no image in one
            raise DataNotFound("data.root", str(root), f"{d}: {' '.join(str(e).split())[:300]}") from None
        classes.append(found)
    if classes[0] != classes[1]:
        raise DataNotFound("data.root", str(root), f"the val classes {classes[1][:5]}... differ from the train "
                                                   f"classes {classes[0][:5]}...")
    return counts[0], counts[1]
