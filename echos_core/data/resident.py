"""The resident data path: a whole in-memory split as one uint8 tensor on the training device.

The idea of airbench (fast CIFAR-10): the data set is small enough to live on the device, so
batches are gathered there and augmented as whole batches, with no per-sample Python, no
worker processes and no host-to-device copy per step.  Any source that builds an
:class:`~echos_core.data.sources.ArrayDataset` (embedded, digits, fake, CIFAR, and every new
in-memory set) gets this path for free through :meth:`ArrayDataset.tensors`: uint8
``(N, C, H, W)`` images and int64 labels.

What a training batch goes through, all batched on the device:

* order: ``epoch_order(N, seed, epoch)``, the permutation the per-sample loader serves, so
  both paths see the same images in the same batches;
* crop with reflect padding and horizontal flip: offsets ``dy, dx`` uniform on
  ``0 .. 2 * pad`` and a flip with probability ``hflip``, one draw per image from a CPU
  generator seeded with ``epoch_seed(seed, epoch, _AUGMENT)``.  The pixels equal
  ``reflect_crop`` (+ ``flip``) of the per-sample path for the same draw; the draws have the
  same distribution but come from this generator rather than from torch's global one
  (tests/test_resident.py checks both);
* normalisation with the data set's mean and std (the same float operations as the
  per-sample ``ResizeNormalize``: identical values);
* random erasing: timm's ``RandomErasing`` on the normalised batch (per-pixel noise).

Mixup/CutMix stay with the trainer (timm's ``Mixup`` on the batch, as on the loader path).
Like the per-sample loader, a shuffled loader seeds Python's, NumPy's and torch's global
generators from ``(seed, epoch)`` when iteration starts, so dropout, drop path, mixup and
erasing are a function of ``(seed, epoch)`` too and a resumed run sees exactly the batches of
an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..config import AugmentConfig
from ..seeding import seed_everything
from .loader import _AUGMENT, _GLOBALS, epoch_order, epoch_seed, shard_bounds
from .transforms import reflect_index, resize_uint8

__all__ = ["ResidentSplit", "ResidentLoader", "draw_crop_flip", "crop_flip"]


class ResidentSplit:
    """One split on ``device``: uint8 images ``(N, C, size, size)`` and int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int, device: torch.device):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        images = images.to(device)
        if tuple(images.shape[-2:]) != (size, size):  # not resized in memory: once, here, on the device
            images = torch.cat([resize_uint8(part, size) for part in images.split(1024)])
        self.images = images.contiguous()
        self.labels = labels.to(device)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.labels)


def draw_crop_flip(n: int, pad: int, hflip: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crop offsets (n, 2) uniform on ``0 .. 2 * pad`` and ``n`` flips (bool) with probability ``hflip``."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < hflip
    return offsets, flips


def crop_flip(x: torch.Tensor, pad: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Batched ``reflect_crop(x[i], pad, *offsets[i])``, flipped left-right where ``flips[i]``:
    one gather per axis, any dtype, on ``x``'s device."""
    b, c, h, w = x.shape
    rows = reflect_index(h, pad, offsets[:, 0])
    cols = reflect_index(w, pad, offsets[:, 1])
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


class ResidentLoader:
    """Batches of a :class:`ResidentSplit` for one epoch: ``(normalised float (B, C, H, W), labels)``.

    ``augment=None`` (evaluation): batches in order, no augmentation, the last one partial unless
    ``drop_last``.  Iterating twice gives the same batches.  ``shard=(rank, world_size)``: rank's
    contiguous part of every global batch, with the crops and flips that part gets in the whole batch.
    """

    def __init__(self, split: ResidentSplit, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                 mean: tuple, std: tuple, augment: Optional[AugmentConfig] = None, drop_last: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        self.split, self.shard = split, tuple(shard)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.epoch, self.drop_last = bool(shuffle), int(seed), int(epoch), bool(drop_last)
        dev = split.device
        self.mean = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=dev).view(1, -1, 1, 1)
        self.pad = min(augment.crop_padding, split.images.shape[-1] - 1) if augment else 0  # as the per-sample path
        self.hflip = augment.hflip if augment else 0.0
        self.erase = None
        if augment is not None and augment.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(augment.random_erasing, mode="pixel", device=str(dev))

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            order = epoch_order(n, self.seed, self.epoch)
            seed_everything(epoch_seed(self.seed, self.epoch, _GLOBALS))
        else:
            order = torch.arange(n)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, _AUGMENT))
        order = order.to(self.split.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            lo, hi = shard_bounds(len(idx), self.shard)
            draws = draw_crop_flip(len(idx), self.pad, self.hflip, g) if self.pad or self.hflip > 0 else None
            if hi == lo:
                continue
            idx = idx[lo:hi]
            x = self.split.images[idx]
            if draws is not None:
                offsets, flips = draws[0][lo:hi], draws[1][lo:hi]
                x = crop_flip(x, self.pad, offsets.to(x.device), flips.to(x.device))
            x = (x.float().div_(255.0) - self.mean) / self.std
            if self.erase is not None:
                x = self.erase(x)
            yield x, self.split.labels[idx]
