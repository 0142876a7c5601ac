"""Per-sample data loaders whose every random draw is a function of (seed, epoch).

``make_loader(ds, bs, shuffle=True, seed=s, epoch=e)`` gives the same batches, in the
same order, with the same augmentation, every time it is iterated, in this process or
another, with any number of workers: a resumed run sees exactly the batches of an
uninterrupted one.  ``loader.set_epoch(e)`` moves a loader to another epoch; its worker
processes live across epochs (``persistent_workers``, as timm's ``MultiEpochsDataLoader``).

* Order: :func:`epoch_order`, a permutation drawn from a generator seeded from (seed, epoch).
* Augmentation: timm's transforms draw from the global ``random``, NumPy and torch
  generators.  Every training batch carries a seed, a function of (seed, epoch, batch
  number); whichever process builds the batch (a worker or the main process) seeds those
  three generators with it first.  So augmentation does not depend on the number of
  workers nor on what a persistent worker did in earlier epochs.
* The main process: a shuffled (training) loader also seeds the three global generators
  from (seed, epoch) when iteration starts, so everything else that draws from them during
  the epoch (dropout, drop path, mixup) is a function of (seed, epoch) too.  Unshuffled
  (evaluation) loaders leave the globals alone and seed nothing.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..seeding import seed_everything

__all__ = ["epoch_seed", "epoch_order", "EpochLoader", "make_loader", "shard_bounds", "DeviceNormalise",
           "device_normalised_loader"]

_ORDER, _GLOBALS, _AUGMENT = 0, 1, 2  # independent streams derived from the same (seed, epoch)


def epoch_seed(seed: int, epoch: int, stream: int = _ORDER, *more: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, stream, *more)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream), *map(int, more)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which a shuffled loader of ``n`` items serves them at (seed, epoch).

    The permutation a ``DataLoader`` with ``RandomSampler`` drew from a generator seeded with
    ``epoch_seed(seed, epoch)`` (it first draws its workers' base seed, then ``randperm(n)``);
    the per-sample and the resident path both serve it (tests/test_speed.py).
    """
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g)


def shard_bounds(m: int, shard: tuple[int, int]) -> tuple[int, int]:
    """The part ``[lo, hi)`` of a batch of ``m`` items that rank ``shard[0]`` of ``shard[1]`` takes.

    Contiguous parts whose sizes differ by at most one; together they are the whole batch, so
    ``world_size`` data-parallel processes see exactly the batches of one process.
    """
    rank, world = shard
    return m * rank // world, m * (rank + 1) // world


class _EpochBatches(Sampler):
    """Batches of ``(index, batch seed)``: :func:`epoch_order` (or 0..n-1), the seed None when unshuffled.

    ``batch_size`` is the global batch; a ``shard`` ``(rank, world_size)`` yields that rank's part of each.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, epoch: int,
                 shard: tuple[int, int] = (0, 1)):
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.epoch, self.shard = int(seed), int(epoch), tuple(shard)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list]:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        for b in range(len(self)):
            s = epoch_seed(self.seed, self.epoch, _AUGMENT, b) if self.shuffle else None
            batch = order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            lo, hi = shard_bounds(len(batch), self.shard)
            if hi > lo:
                yield [(i, s) for i in batch[lo:hi]]


class _SeededFetch(Dataset):
    """``dataset`` fetched by ``(index, batch seed)`` keys: the globals are seeded once per batch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list) -> list:
        if keys and keys[0][1] is not None:
            seed_everything(keys[0][1])
        return [self.dataset[i] for i, _ in keys]

    def __getitem__(self, key):
        return self.__getitems__([key])[0]


class EpochLoader(DataLoader):
    """A ``DataLoader`` whose order and augmentation are fixed by (seed, epoch); see the module docstring."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                 num_workers: int = 0, drop_last: bool = False, shard: tuple[int, int] = (0, 1), **kwargs):
        batches = _EpochBatches(len(dataset), batch_size, shuffle, drop_last, seed, epoch, shard)
        super().__init__(_SeededFetch(dataset), batch_sampler=batches, num_workers=num_workers,
                         persistent_workers=num_workers > 0, **kwargs)
        self.seed, self.shuffle = int(seed), bool(shuffle)

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def set_epoch(self, epoch: int) -> "EpochLoader":
        self.batch_sampler.epoch = int(epoch)
        return self

    def __iter__(self):
        if self.shuffle:
            seed_everything(epoch_seed(self.seed, self.epoch, _GLOBALS))
        return super().__iter__()


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                num_workers: int = 0, drop_last: bool = False, shard: tuple[int, int] = (0, 1),
                pin_memory: Optional[bool] = None, collate_fn=None) -> EpochLoader:
    """A loader for one epoch (``set_epoch`` for the next): batches and augmentation are a pure
    function of (seed, epoch); with ``shard=(rank, world_size)``, rank's part of each batch."""
    return EpochLoader(dataset, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, num_workers=num_workers,
                       drop_last=drop_last, shard=shard, collate_fn=collate_fn,
                       pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)


def device_normalised_loader(dataset: Dataset, batch_size: int, *, mean: tuple, std: tuple, device,
                             **kwargs) -> "DeviceNormalise":
    """:func:`make_loader` over a dataset of uint8 images, collated as uint8 batches (timm's ``fast_collate``)
    and normalised on ``device`` (:class:`DeviceNormalise`)."""
    from timm.data.loader import fast_collate

    loader = make_loader(dataset, batch_size, collate_fn=fast_collate, **kwargs)
    return DeviceNormalise(loader, mean=mean, std=std, channels=len(mean), device=torch.device(device))


class DeviceNormalise:
    """timm's ``PrefetchLoader`` over an :class:`EpochLoader` of uint8 batches: each batch is moved to the
    device, converted to float and normalised there (``(x - 255 mean) / (255 std)``), as timm's training
    script does.  With worker processes it reads one batch ahead, as timm's does; when this process builds
    the batches (``num_workers=0``) it does not, because building a batch seeds the global generators
    (see above) and reading ahead would move the draws that training makes between batches (mixup,
    dropout): the images reaching the model are then those of the per-sample normalising path, within
    float rounding (tests/test_speed.py)."""

    def __init__(self, loader: EpochLoader, **prefetch_args):
        from timm.data.loader import PrefetchLoader

        self.prefetch = PrefetchLoader(loader, **prefetch_args)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> "DeviceNormalise":
        self.loader.set_epoch(epoch)
        return self

    def __iter__(self):
        if self.loader.num_workers > 0:
            yield from self.prefetch
            return
        p = self.prefetch
        for x, y in self.loader:
            x = x.to(device=p.device, non_blocking=True).to(p.img_dtype).sub_(p.mean).div_(p.std)
            yield x, y.to(device=p.device, non_blocking=True)
