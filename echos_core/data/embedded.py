"""The ``embedded`` data set: patches of photographs that ship inside scikit-image.

Nothing is ever downloaded: the ten photographs below are files inside the
scikit-image wheel.  The task is "which photograph is this 32x32 patch from?".

Construction (all fixed; the run seed plays no part):

1. Ten natural photographs (:data:`PHOTOS`); the label of a patch is the index of
   its photograph in that tuple.  Non-natural images that scikit-image also ships
   (microscopy, retina, Hubble deep field) are deliberately left out.
2. Common treatment, so that colour and brightness alone do not name the photo:
   every photograph is converted to grey (luminance) and histogram-equalised, so
   each one has the same (uniform) grey-level distribution.  What is left to tell
   the classes apart is spatial structure: edges, textures, blobs, which is what
   depthwise kernels are made of.  Patches are served as three equal channels.
3. Disjoint regions: each photograph is cut into a grid of 64x64 blocks (the grid is
   centred; the border that does not fill a block is dropped).  A quarter of the
   blocks of every photograph, drawn with a fixed seed, are validation blocks, the
   rest training blocks.  Every patch lies entirely inside one block, so no
   validation patch shares a single pixel with any training patch.
4. 400 training and 100 validation patches per class, at distinct positions drawn
   uniformly (fixed seed) among all 32x32 windows inside that split's blocks.  Both
   splits are stored in a fixed shuffled order, so "the first N" is class-balanced.

Result: 4000 training and 1000 validation patches of 32x32, 10 balanced classes.
Building takes about a second; the result is cached as
``<data_root>/embedded/embedded-v<VERSION>-<key>.npz`` where the key hashes every
build parameter and the scikit-image version.  For another ``data.image_size`` the
32x32 patches are resized (the task stays the same, only the resolution changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PHOTOS", "VERSION", "EmbeddedPatches", "load_embedded", "build_embedded_arrays"]

VERSION = 1
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket")
PATCH = 32  # side of a patch in pixels
BLOCK = 64  # side of a grid block; a patch never crosses a block border
VAL_FRACTION = 0.25  # share of each photograph's blocks that are validation blocks
TRAIN_PER_CLASS = 400
VAL_PER_CLASS = 100
BUILD_SEED = 20240110  # fixed: the data set does not depend on the run seed


@dataclass
class EmbeddedPatches:
    """The built patch set: grey uint8 patches, labels and where each patch came from."""

    train_x: np.ndarray  # (N, PATCH, PATCH) uint8
    train_y: np.ndarray  # (N,) int64, index into classes
    train_coords: np.ndarray  # (N, 3) int64: photo index, top row, left column
    val_x: np.ndarray
    val_y: np.ndarray
    val_coords: np.ndarray
    classes: tuple
    patch: int
    cache_path: Path
    from_cache: bool


def _params() -> dict:
    import skimage

    return {
        "version": VERSION, "photos": list(PHOTOS), "patch": PATCH, "block": BLOCK,
        "val_fraction": VAL_FRACTION, "train_per_class": TRAIN_PER_CLASS,
        "val_per_class": VAL_PER_CLASS, "seed": BUILD_SEED, "skimage": skimage.__version__,
    }


def cache_path(root: Path) -> Path:
    key = hashlib.sha256(json.dumps(_params(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / "embedded" / f"embedded-v{VERSION}-{key}.npz"


def _grey_equalised(name: str) -> np.ndarray:
    """A photograph as uint8 grey with a flat histogram."""
    from skimage import color, data, exposure

    img = getattr(data, name)()
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    img = exposure.equalize_hist(img)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _blocks(h: int, w: int) -> tuple[np.ndarray, int, int]:
    """Top-left corners (n, 2) of the centred grid of BLOCK x BLOCK blocks."""
    rows, cols = h // BLOCK, w // BLOCK
    y0, x0 = (h - rows * BLOCK) // 2, (w - cols * BLOCK) // 2
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([y0 + r.ravel() * BLOCK, x0 + c.ravel() * BLOCK], axis=1), rows, cols


def _sample(corners: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct patch positions (n, 2) lying wholly inside the given blocks."""
    per_block = (BLOCK - PATCH + 1) ** 2
    flat = rng.choice(len(corners) * per_block, size=n, replace=False)
    block, offset = np.divmod(flat, per_block)
    dy, dx = np.divmod(offset, BLOCK - PATCH + 1)
    return corners[block] + np.stack([dy, dx], axis=1)


def _cut(img: np.ndarray, pos: np.ndarray) -> np.ndarray:
    ar = np.arange(PATCH)
    return img[pos[:, 0, None, None] + ar[None, :, None], pos[:, 1, None, None] + ar[None, None, :]]


def build_embedded_arrays() -> dict[str, np.ndarray]:
    """Build the patch set from the photographs (no caching)."""
    rng = np.random.default_rng(BUILD_SEED)
    out: dict[str, list] = {k: [] for k in ("train_x", "train_y", "train_coords", "val_x", "val_y", "val_coords")}
    for label, name in enumerate(PHOTOS):
        img = _grey_equalised(name)
        corners, _, _ = _blocks(*img.shape)
        n_val = max(1, int(round(VAL_FRACTION * len(corners))))
        order = rng.permutation(len(corners))
        split_corners = {"val": corners[np.sort(order[:n_val])], "train": corners[np.sort(order[n_val:])]}
        for split, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            pos = _sample(split_corners[split], n, rng)
            out[f"{split}_x"].append(_cut(img, pos))
            out[f"{split}_y"].append(np.full(n, label, dtype=np.int64))
            out[f"{split}_coords"].append(np.concatenate([np.full((n, 1), label), pos], axis=1).astype(np.int64))
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    for split in ("train", "val"):
        perm = rng.permutation(len(arrays[f"{split}_y"]))
        for k in ("x", "y", "coords"):
            arrays[f"{split}_{k}"] = arrays[f"{split}_{k}"][perm]
    return arrays


def load_embedded(root: Path) -> EmbeddedPatches:
    """Load the patch set from its cache under ``root``, building and caching it if needed."""
    path = cache_path(root)
    from_cache = path.is_file()
    if from_cache:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        arrays = build_embedded_arrays()
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename, so concurrent runs never read a half-written cache
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache should be readable
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return EmbeddedPatches(**arrays, classes=PHOTOS, patch=PATCH, cache_path=path, from_cache=from_cache)
