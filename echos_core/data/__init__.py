"""Data sets, transforms and loaders: everything between files on disk and a batch.

``build_data(cfg)`` returns a :class:`DataBundle`: training and validation data sets that
yield ``(normalised float CxHxW tensor, int label)``, the class count, the input
channels, the normalisation, the mixup/CutMix function (or None) and a one-line
description.  ``bundle.loader("train" | "val", ...)`` gives one epoch's batches, a pure
function of (seed, epoch), by the configured ``data.pipeline``: the resident path
(:mod:`.resident`, the whole split on the device, augmentation batched there) or the
per-sample loader (``make_loader``; for in-memory sets without random erasing, its batches are
collated as uint8 and normalised on the device: ``device_normalised_loader``).

The map:

* :mod:`.embedded`   the default data set: patches of photographs shipped in scikit-image
* :mod:`.sources`    readers for digits, CIFAR-10/100, ImageFolder and fake data
* :mod:`.fashion_mnist` Fashion-MNIST from its idx files (Debian's package, a folder, or torchvision)
* :mod:`.transforms` training / validation transforms and mixup, from timm
* :mod:`.loader`     reproducible per-sample loaders
* :mod:`.resident`   the resident path: whole splits on the device, batched augmentation

Data sets are identical for every run seed: limits (``train_limit``) draw their
subset with a fixed seed, so runs that differ only in ``seed`` or ``init`` see the
same images.  Normalisation: the published CIFAR statistics, ImageNet's for
ImageFolder, and for the in-memory sets (embedded, digits, fashion_mnist, fake) the per-channel
mean and std of the full training split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .embedded import PHOTOS, load_embedded
from .fashion_mnist import count_fashion_mnist, load_fashion_mnist
from .loader import device_normalised_loader, epoch_seed, make_loader
from .sources import (ArrayDataset, DataNotFound, count_cifar, count_imagefolder, imagefolder_dirs, load_cifar,
                      load_digits, load_fake)
from .transforms import SMALL_MAX, imagefolder_transforms, mixup_fn, train_transform, val_transform

__all__ = ["DataBundle", "DataNotFound", "build_data", "count_images", "make_loader", "data_root", "epoch_seed",
           "ArrayDataset"]

LIMIT_SEED = 0  # fixed: the train_limit subset is the same for every run seed
PRESIZE_MAX_BYTES = 256 * 2**20  # small inputs: resize in-memory sets once if the result fits in this

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class DataBundle:
    """What the trainer needs to know about the data."""

    train: Dataset  # yields (normalised float tensor C x H x W, int label), augmented
    val: Dataset  # same, deterministic
    num_classes: int
    in_chans: int
    mean: tuple
    std: tuple
    mixup_fn: Optional[Any]  # timm.data.Mixup, or None when mixup and CutMix are both off
    description: str  # one line: what the data is and how much of it
    image_size: int = 0  # side of the network input
    pipeline: str = "loader"  # "resident" or "loader" (data.pipeline decided)
    augment: Optional[Any] = None  # the AugmentConfig, for the resident path
    _resident: dict = field(default_factory=dict, repr=False)  # (split, device) -> ResidentSplit
    _loaders: dict = field(default_factory=dict, repr=False)  # per-sample loaders, reused across epochs

    def loader(self, split: str, batch_size: int, *, seed: int, epoch: int, device="cpu",
               num_workers: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterable:
        """One epoch of ``split`` ("train": shuffled, augmented, full batches; "val": in order, all images)
        on the bundle's pipeline.  Resident batches are already on ``device``.  ``shard=(rank, world_size)``:
        that rank's part of every batch of ``batch_size`` (echos_core.parallel)."""
        train = split == "train"
        ds = self.train if train else self.val
        if self.pipeline != "resident":  # one loader per split: its workers live across epochs
            key = (split, batch_size, seed, num_workers, tuple(shard), str(device))
            if key not in self._loaders:
                args = dict(shuffle=train, seed=seed, epoch=epoch, num_workers=num_workers, drop_last=train,
                            shard=shard)
                u8 = ds.uint8_view() if isinstance(ds, ArrayDataset) else None
                # uint8 batches normalised on the device when nothing follows the normalisation (random
                # erasing does: then, and for ImageFolder, normalised per sample as before)
                self._loaders[key] = (make_loader(ds, batch_size, **args) if u8 is None else
                                      device_normalised_loader(u8, batch_size, mean=self.mean, std=self.std,
                                                               device=device, **args))
            return self._loaders[key].set_epoch(epoch)
        from .resident import ResidentLoader, ResidentSplit

        key = (split, str(device))
        if key not in self._resident:
            self._resident[key] = ResidentSplit(*ds.tensors(), size=self.image_size, device=torch.device(device))
        return ResidentLoader(self._resident[key], batch_size, shuffle=train, seed=seed, epoch=epoch,
                              mean=self.mean, std=self.std, augment=self.augment if train else None,
                              drop_last=train, shard=shard)


def data_root(cfg) -> Path:
    """``cfg.data.root``, else ``$ECHOS_DATA``, else ``~/.cache/echos/data``."""
    if cfg.data.root:
        return Path(cfg.data.root).expanduser()
    env = os.environ.get("ECHOS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "echos" / "data"


def _limit_train(ds: Dataset, limit: Optional[int]) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    g = torch.Generator().manual_seed(LIMIT_SEED)
    idx = torch.randperm(len(ds), generator=g)[:limit].sort().values
    return ds.subset(idx) if isinstance(ds, ArrayDataset) else Subset(ds, idx.tolist())


def _limit_val(ds: Dataset, limit: Optional[int]) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    idx = torch.arange(limit)
    return ds.subset(idx) if isinstance(ds, ArrayDataset) else Subset(ds, idx.tolist())


def _in_memory(cfg, root: Path) -> tuple[ArrayDataset, ArrayDataset, str, Optional[tuple]]:
    """(train, val, what, stats) for the data sets held as uint8 arrays."""
    d = cfg.data
    stats = None
    if d.name == "embedded":
        p = load_embedded(root)
        rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
        train = ArrayDataset(rgb(p.train_x), p.train_y, classes=p.classes, coords=p.train_coords)
        val = ArrayDataset(rgb(p.val_x), p.val_y, classes=p.classes, coords=p.val_coords)
        what = (f"{p.patch}x{p.patch} patches of {len(PHOTOS)} scikit-image photographs "
                "(grey, equalised; train and val from disjoint blocks)")
    elif d.name == "digits":
        (xtr, ytr), (xva, yva), classes = load_digits()
        train, val = ArrayDataset(xtr, ytr, classes=classes), ArrayDataset(xva, yva, classes=classes)
        what = "scikit-learn handwritten digits (8x8 grey, upsampled; stratified 80/20 split)"
    elif d.name == "fashion_mnist":
        root_set = Path(d.root).expanduser() if d.root else None
        (xtr, ytr), (xva, yva), classes = load_fashion_mnist(root_set, root, d.download)
        train, val = ArrayDataset(xtr, ytr, classes=classes), ArrayDataset(xva, yva, classes=classes)
        what = "Fashion-MNIST (28x28 grey product photographs; official 60k train / 10k test split as validation)"
    elif d.name == "fake":
        (xtr, ytr), (xva, yva), classes = load_fake(d.fake_size, d.fake_classes, d.image_size)
        train, val = ArrayDataset(xtr, ytr, classes=classes), ArrayDataset(xva, yva, classes=classes)
        what = "fake class-dependent colour patterns with noise"
    else:  # cifar10, cifar100
        (xtr, ytr), (xva, yva), classes = load_cifar(d.name, root, d.download)
        train, val = ArrayDataset(xtr, ytr, classes=classes), ArrayDataset(xva, yva, classes=classes)
        what = f"{'CIFAR-10' if d.name == 'cifar10' else 'CIFAR-100'} from {root}"
        stats = CIFAR_STATS[d.name]
    return train, val, what, stats


def count_images(cfg) -> tuple[int, int]:
    """(train, val) images ``build_data(cfg)`` would give, limits applied, opening each source cheaply: counts
    from indexes, headers and label lists, never the images; a missing or malformed source is a DataNotFound."""
    from .embedded import TRAIN_PER_CLASS, VAL_PER_CLASS

    d = cfg.data
    root = data_root(cfg)
    if d.name == "embedded":
        n_train, n_val = TRAIN_PER_CLASS * len(PHOTOS), VAL_PER_CLASS * len(PHOTOS)
    elif d.name == "digits":
        (_, ytr), (_, yva), _ = load_digits()
        n_train, n_val = len(ytr), len(yva)
    elif d.name == "fashion_mnist":
        n_train, n_val = count_fashion_mnist(Path(d.root).expanduser() if d.root else None, root, d.download)
    elif d.name == "fake":
        n_train, n_val = d.fake_size, max(1, d.fake_size // 4)
    elif d.name == "imagefolder":
        n_train, n_val = count_imagefolder(root)
    else:  # cifar10, cifar100
        n_train, n_val = count_cifar(d.name, root, d.download)
    limit = lambda n, lim: n if lim is None else min(n, lim)  # noqa: E731
    return limit(n_train, d.train_limit), limit(n_val, d.val_limit)


def build_data(cfg) -> DataBundle:
    """Build the training and validation data of a validated :class:`~echos_core.config.Config`."""
    d = cfg.data
    size = d.image_size
    root = data_root(cfg)
    if d.name == "imagefolder":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        from torchvision.datasets import ImageFolder

        mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
        train_dir, val_dir = imagefolder_dirs(root)
        train_tf, val_tf = imagefolder_transforms(size, mean, std, d.augment)
        train, val = ImageFolder(str(train_dir), transform=train_tf), ImageFolder(str(val_dir), transform=val_tf)
        if val.classes != train.classes:
            raise DataNotFound("data.root", str(root),
                               f"{val_dir} has classes {val.classes[:5]}... but {train_dir} has {train.classes[:5]}...")
        classes = train.classes
        what = f"ImageFolder {root}"
    else:
        train, val, what, stats = _in_memory(cfg, root)
        classes = train.classes
        mean, std = stats if stats is not None else train.channel_stats()
        train.transform = train_transform(size, mean, std, d.augment)
        val.transform = val_transform(size, mean, std)
    train, val = _limit_train(train, d.train_limit), _limit_val(val, d.val_limit)
    for ds in (train, val):  # small inputs: resize once here, not per image per epoch, when it fits
        if isinstance(ds, ArrayDataset) and size <= SMALL_MAX and \
                len(ds) * size * size * ds.images.shape[-1] <= PRESIZE_MAX_BYTES:
            ds.resize_(size)
    num_classes = len(classes)
    pipeline = d.resolved_pipeline()
    description = (f"{d.name}: {what}; {len(train)} train / {len(val)} val images, "
                   f"{num_classes} classes, {size}x{size} px; {pipeline} pipeline")
    return DataBundle(train=train, val=val, num_classes=num_classes, in_chans=3, mean=tuple(mean), std=tuple(std),
                      mixup_fn=mixup_fn(d.augment, cfg.train.label_smoothing, num_classes),
                      description=description, image_size=size, pipeline=pipeline, augment=d.augment)
