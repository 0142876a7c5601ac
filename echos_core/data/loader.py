"""Data loaders whose every random draw is a function of (seed, epoch).

``make_loader(ds, bs, shuffle=True, seed=s, epoch=e)`` gives the same batches, in the
same order, with the same augmentation, every time it is iterated, in this process or
another: a resumed run sees exactly the batches of an uninterrupted one.

* Order: a ``torch.Generator`` seeded from (seed, epoch) drives the sampler, and is
  re-seeded each time iteration starts.
* Augmentation, ``num_workers == 0``: timm's transforms and mixup draw from the global
  ``random``, NumPy and torch generators, so a shuffled (training) loader seeds those
  three from (seed, epoch) when iteration starts.  Everything else that draws from them
  during the epoch in the same process (dropout, drop path, mixup) becomes a function
  of (seed, epoch) too.  Unshuffled (evaluation) loaders leave the globals alone.
* Augmentation, ``num_workers > 0``: torch seeds ``random``, NumPy and torch in each
  worker from a base seed drawn from the loader's generator, hence from (seed, epoch).
  The main process is seeded as above.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..seeding import seed_everything

__all__ = ["epoch_seed", "EpochLoader", "make_loader"]

_ORDER, _GLOBALS = 0, 1  # independent streams derived from the same (seed, epoch)


def epoch_seed(seed: int, epoch: int, stream: int = _ORDER) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, stream)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochLoader(DataLoader):
    """A ``DataLoader`` whose order and augmentation are fixed by (seed, epoch)."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                 num_workers: int = 0, drop_last: bool = False, **kwargs):
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(seed, epoch))
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                         drop_last=drop_last, generator=generator, **kwargs)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.shuffle = bool(shuffle)

    def __iter__(self):
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        if self.shuffle:
            seed_everything(epoch_seed(self.seed, self.epoch, _GLOBALS))
        return super().__iter__()


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A loader for one epoch: batches and augmentation are a pure function of (seed, epoch)."""
    return EpochLoader(dataset, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                       num_workers=num_workers, drop_last=drop_last,
                       persistent_workers=False, pin_memory=torch.cuda.is_available())
