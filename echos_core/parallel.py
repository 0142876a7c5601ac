"""Data parallelism as the trainer sees it: one of ``world_size`` processes, torch.distributed underneath.

The trainer knows nothing of Ray.  Whoever starts the processes and their process group (Ray
Train's ``TorchTrainer``, in :mod:`echos_core.sweep.ddp`; any ``torchrun`` would do) hands the
trainer a :class:`DataParallel`, and the trainer uses it at these points only:

* :meth:`check_identical` right after the init: every rank built and initialised the model
  itself from the same seed; a checksum per tensor, all-reduced as min and max, proves the
  ranks agree before the first step (DDP would silently overwrite a difference with rank 0's);
* :meth:`wrap`: torch's ``DistributedDataParallel`` (gradients averaged over ranks every step);
* :attr:`shard`: ``(rank, world_size)`` for ``DataBundle.loader``: every global batch of
  ``train.batch_size`` images (the batch a single process would see) is cut into ``world_size``
  contiguous parts and rank ``r`` trains on part ``r``.  Averaging the parts' gradients gives
  the gradient of the whole batch, so a data-parallel run follows the single-process run up to
  floating-point order and per-part batch-norm statistics;
* :meth:`sync_buffers` before evaluation (rank 0's batch-norm running statistics everywhere),
  :meth:`all_sum` for the validation sums and :meth:`mean` for the training loss;
* :attr:`is_main`: only rank 0 writes the run folder, the metrics file and the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["DataParallel", "local_batch_size", "model_checksums"]


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Images per process and step; ``global_batch`` must split evenly."""
    if global_batch % world_size:
        raise ValueError(f"train.batch_size {global_batch} does not split over {world_size} workers")
    return global_batch // world_size


def model_checksums(model: nn.Module) -> torch.Tensor:
    """(tensors, 2) float64: the sum and the position-weighted sum of every parameter and buffer.

    The weighted sum catches permuted values; both are computed in float64 on the CPU, so ranks
    holding the same numbers get the same bits.
    """
    rows = []
    for t in list(model.parameters()) + list(model.buffers()):
        v = t.detach().to("cpu", torch.float64).flatten()
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64)
        rows.append(torch.stack([v.sum(), (v * w).sum() / max(v.numel(), 1)]))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


@dataclass
class DataParallel:
    """Rank ``rank`` of ``world_size`` in an initialised default process group."""

    rank: int
    world_size: int
    device: Optional[torch.device] = None  # the process's device (a CUDA index for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def _dist(self):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group")
        return dist

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" and self.device is not None else torch.device("cpu")

    def check_identical(self, model: nn.Module, what: str = "the initial model") -> None:
        """Raise unless every rank holds bit-identical parameters and buffers."""
        dist = self._dist()
        local = model_checksums(model).to(self._comm_device())
        lo, hi = local.clone(), local.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        bad = (lo != hi).any(dim=1).nonzero().flatten().tolist()
        if bad:
            names = [n for n, _ in list(model.named_parameters()) + list(model.named_buffers())]
            raise RuntimeError(f"{what} differs between the {self.world_size} data-parallel ranks "
                               f"(first differing tensor: {names[bad[0]]}); the init must not depend on the rank")

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel`` around ``model`` (already on its device)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank."""
        dist = self._dist()
        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor on ``values``' device)."""
        dist = self._dist()
        out = values.detach().to(self._comm_device(), torch.float64).clone()
        dist.all_reduce(out)
        return out.to(values.device)

    def mean(self, value: float) -> float:
        return float(self.all_sum(torch.tensor([float(value)]))[0]) / self.world_size

    def gather(self, obj: Any) -> list:
        """``obj`` of every rank, in rank order."""
        dist = self._dist()
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out
