"""Figures: a mosaic of depthwise kernels.

Every kernel gets its own symmetric diverging colour scale (red positive, blue negative,
white zero, limits +-max|w| of that kernel), so a centre-surround shape is visible whatever
the kernel's norm.  Matplotlib is imported lazily and drawn through a bare ``Figure`` (Agg),
without pyplot: no display, no global backend state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["kernel_mosaic"]

CMAP = "RdBu_r"  # diverging: red > 0, blue < 0


def kernel_mosaic(kernels: torch.Tensor, path: str | Path, *, title: str | None = None,
                  labels: Sequence[str] | None = None, ncols: int | None = None,
                  max_kernels: int = 256) -> Path:
    """Write a grid of ``kernels`` (n, k, k) to ``path`` (format from the suffix); returns the path.

    Only the first ``max_kernels`` are drawn (the title says so); ``labels`` (one per kernel)
    are drawn under each tile.
    """
    if kernels.ndim != 3:
        raise ValueError(f"kernels: shape {tuple(kernels.shape)}; expected (n, k, k)")
    n_all = kernels.shape[0]
    if n_all == 0:
        raise ValueError("kernels: empty; nothing to draw")
    if labels is not None and len(labels) != n_all:
        raise ValueError(f"labels: {len(labels)} given for {n_all} kernels")
    if max_kernels < 1:
        raise ValueError(f"max_kernels={max_kernels}: must be >= 1")

    from matplotlib.figure import Figure  # no pyplot: no global backend, no display

    w = kernels[:max_kernels].detach().float().cpu()
    n = w.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    tile = 0.9 if labels is None else 1.1
    fig = Figure(figsize=(ncols * 0.9 + 0.2, nrows * tile + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        lim = float(w[i].abs().max()) or 1.0
        ax.imshow(w[i].numpy(), cmap=CMAP, vmin=-lim, vmax=lim, interpolation="nearest")
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=6, pad=2)
    head = title or ""
    if n < n_all:
        head = f"{head} (first {n} of {n_all})".strip()
    if head:
        fig.suptitle(head, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
