"""Depthwise kernels as data: extraction, normalisation, centre-surround index, DoG fit, clustering.

Everything here works on plain float arrays ``(n, k, k)`` of square, odd-sized kernels (``k >= 3``).
The definitions, exactly:

Centre-surround index (CSI), per kernel ``w`` and centre radius ``r``:
    centre ``C = {pixels with d <= r}``, surround ``S`` = the other pixels (``d`` = distance from
    the middle pixel), template ``u = 1_C / |C| - 1_S / |S|`` (centre mean minus surround mean,
    zero DC), and ``CSI = <w, u> / (||w|| ||u||)``, the cosine between the kernel and the template.
    It lies in [-1, 1] (Cauchy-Schwarz), does not change when ``w`` is scaled, is > 0 for an
    On-centre kernel (centre weights above the surround's) and < 0 for an Off-centre one.
    The radius is data-driven by default: ``r = gamma_fit (k + 1) / 2``, the zero crossing of the
    kernel's best-fitting DoG (:func:`fit_dog`), so a small-centre On kernel is not judged with a
    large-centre template.  ``radius='fixed'`` (:data:`FIXED_RADIUS`) uses ``r = (k + 1) / 4``, the
    DoG zero crossing at gamma = 0.5, for every kernel.
    For i.i.d. Gaussian noise both have mean 0; the fixed one has standard deviation exactly ``1 / k``
    (mean ``|CSI|`` 0.16 at k = 5, 0.11 at k = 7), the data-driven one, which picks its radius, a larger
    spread (mean ``|CSI|`` 0.26 at k = 5, 0.20 at k = 7).  Clean DoG kernels (gamma 0.3..0.7) score
    0.6 to 1.0 data-driven; the fixed template undersells small centres (0.2 to 0.3 at gamma 0.3).

DoG fit, per kernel: ``min over a, gamma of ||w - a dog_gamma||^2`` where ``dog_gamma`` is the
    unit-lobe On-centre kernel of :func:`echos_core.dog.dog_kernels`.  For each gamma of a grid
    (step 0.002 over ``[0.05, min(0.95, max_gamma(k)))``) the amplitude has the closed form
    ``a = <w, d> / ||d||^2``; the best gamma maximises ``<w, d>^2 / ||d||^2``.  Reported: gamma, ``a``
    (sign = On/Off, magnitude relative to unit lobes) and ``R^2 = 1 - ||w - a d||^2 / ||w||^2``
    (the squared cosine between ``w`` and the best DoG; 1 = a pure DoG, ~0 = nothing like one).

Normalisation before clustering (:data:`CLUSTER_NORMALISATIONS`):
    ``'l2'`` (default) divides each kernel by its L2 norm (only the shape counts);
    ``'zscore'`` subtracts each kernel's mean and divides by its standard deviation (shape without DC);
    ``'none'`` clusters raw weights (magnitudes count too).

Clustering (:func:`cluster_kernels`): scikit-learn ``KMeans`` (k-means++, fixed ``n_init``,
``random_state=seed``, one thread) on the normalised, flattened kernels.  Clusters are named from
their members, never from their index: the cluster CSI is the mean CSI of its kernels (for ``'l2'``
this equals the projection of the centroid onto the unit centre-surround template); ``> t`` -> ``'on'``,
``< -t`` -> ``'off'``, otherwise ``'other'``.  The default ``t = max(0.2, 1.5 / k)`` sits above chance:
k-means clusters of i.i.d. Gaussian kernels reach a ``|cluster CSI|`` of up to about ``1.3 / k``
(measured for k = 3..9 and 48..3000 kernels), which at k = 3 would pass a flat 0.2, while the clusters
of DoG kernels have ``|CSI|`` of 0.75 to 0.9 at every size.  With ``unique_names=True`` (the
paper's reading of k = 3: one On, one Off, one other cluster) only the strongest cluster keeps a
name and a weaker one with the same name becomes ``'other'``; by default a name may be shared, so a
layer that holds only On and Off kernels (a DoG init) is not reported with an "other" third just
because k-means had to split one polarity in two.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..dog import dog_kernels, max_gamma
from ..inits import find_dense_convs, find_depthwise_convs

__all__ = [
    "LABELS",
    "CLUSTER_NORMALISATIONS",
    "check_normalisation",
    "FIXED_RADIUS",
    "LayerKernels",
    "depthwise_layers",
    "dense_layers",
    "normalise_kernels",
    "centre_surround_template",
    "centre_surround_index",
    "DogFit",
    "fit_dog",
    "Clustering",
    "cluster_kernels",
    "auto_threshold",
    "name_clusters",
    "epoch_kernel_metrics",
]

LABELS = ("on", "off", "other")
CLUSTER_NORMALISATIONS = ("l2", "zscore", "none")
FIXED_RADIUS = "fixed"  # pass as ``radius`` for r = (k + 1) / 4
_EPS = 1e-12
MIN_THRESHOLD = 0.2  # the automatic naming threshold is max(MIN_THRESHOLD, CHANCE_CSI / k)
CHANCE_CSI = 1.5
GAMMA_STEP = 0.002
GAMMA_MIN = 0.05
GAMMA_MAX = 0.95


# --------------------------------------------------------------------------- extraction


@dataclass
class LayerKernels:
    """The 2-D kernels of one convolution: ``kernels`` (n, k, k) float32, ``index`` (n,) their flat
    position in the layer's ``(out, in_per_group)`` grid, ``total`` = all kernels of the layer."""

    name: str
    kind: str  # "depthwise" or "dense"
    kernels: np.ndarray
    index: np.ndarray
    total: int

    @property
    def kernel_size(self) -> int:
        return int(self.kernels.shape[-1])

    def __len__(self) -> int:
        return int(self.kernels.shape[0])


def _usable(conv: nn.Conv2d) -> bool:
    kh, kw = conv.kernel_size
    return kh == kw and kh >= 3 and kh % 2 == 1


def depthwise_layers(model: nn.Module) -> list[LayerKernels]:
    """Every depthwise kernel of ``model``, one :class:`LayerKernels` per layer (model order).

    Depthwise convolutions are found by structure (:func:`echos_core.inits.find_depthwise_convs`);
    layers whose kernels are not square, odd and at least 3x3 are left out.
    """
    out = []
    for name, conv in find_depthwise_convs(model):
        if not _usable(conv):
            continue
        w = conv.weight.detach().float().cpu()[:, 0].numpy().copy()
        out.append(LayerKernels(name, "depthwise", w, np.arange(len(w)), len(w)))
    return out


def dense_layers(model: nn.Module, max_per_layer: int | None = 256, seed: int = 0) -> list[LayerKernels]:
    """The 2-D kernels of every regular (``groups == 1``) convolution: an ``(out, in, k, k)`` weight
    gives ``out * in`` kernels, of which at most ``max_per_layer`` are kept (a seeded random subset,
    drawn per layer from ``numpy.random.default_rng([seed, layer_number])``; ``None`` keeps all)."""
    out = []
    for i, (name, conv) in enumerate(find_dense_convs(model, min_kernel=3)):
        if not _usable(conv):
            continue
        w = conv.weight.detach().float().cpu()
        flat = w.reshape(-1, w.shape[-2], w.shape[-1])
        total = flat.shape[0]
        idx = np.arange(total)
        if max_per_layer is not None and total > max_per_layer:
            idx = np.sort(np.random.default_rng([seed, i]).choice(total, size=max_per_layer, replace=False))
        out.append(LayerKernels(name, "dense", flat[torch.from_numpy(idx)].numpy().copy(), idx, total))
    return out


# --------------------------------------------------------------------------- normalisation


def _as_array(kernels) -> np.ndarray:
    a = kernels.detach().float().cpu().numpy() if isinstance(kernels, torch.Tensor) else np.asarray(kernels)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"kernels of shape {tuple(a.shape)}: must be (n, k, k)")
    return a.astype(np.float64, copy=False)


def check_normalisation(method: str) -> None:
    """Raise if ``method`` is not one of :data:`CLUSTER_NORMALISATIONS`."""
    if method not in CLUSTER_NORMALISATIONS:
        raise ValueError(f"normalise={method!r}: must be one of {', '.join(CLUSTER_NORMALISATIONS)}")


def normalise_kernels(kernels, method: str = "l2") -> np.ndarray:
    """Flattened kernels ``(n, k*k)`` (float64) after ``method``: 'l2', 'zscore' or 'none'."""
    check_normalisation(method)
    x = _as_array(kernels).reshape(len(kernels), -1)
    if method == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    if method == "zscore":
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(x.std(axis=1, keepdims=True), _EPS)
    return x.copy()


# --------------------------------------------------------------------------- centre-surround index


def _d2(k: int) -> np.ndarray:
    x = np.arange(k, dtype=np.float64) - (k - 1) / 2
    return x[None, :] ** 2 + x[:, None] ** 2


def centre_surround_template(k: int, radius: float | np.ndarray) -> np.ndarray:
    """Unit-norm templates ``u / ||u||``, ``u = 1_C/|C| - 1_S/|S|`` with ``C = {d <= radius}``.

    ``radius`` scalar -> (k, k); array (n,) -> (n, k, k).  The radius is clipped so that the centre
    holds at least the middle pixel and the surround at least the corners.
    """
    d2 = _d2(k)
    r = np.asarray(radius, dtype=np.float64)
    r2 = np.clip(r**2, 0.0, d2.max() - 0.5)[..., None, None]
    centre = d2 <= r2 + 1e-9
    n_c = centre.sum(axis=(-2, -1), keepdims=True)
    u = np.where(centre, 1.0 / n_c, -1.0 / (k * k - n_c))
    return u / np.linalg.norm(u.reshape(*u.shape[:-2], -1), axis=-1)[..., None, None]


def centre_surround_index(kernels, radius: float | np.ndarray | str | None = None,
                          fit: "DogFit | None" = None) -> np.ndarray:
    """CSI in [-1, 1] per kernel (module docstring): cosine with the centre-minus-surround template.

    ``radius``: None (default) = data-driven, ``gamma_fit * (k + 1) / 2`` from ``fit`` (computed if
    not given); ``'fixed'`` = ``(k + 1) / 4``; a number or an (n,) array = that radius in pixels.
    """
    w = _as_array(kernels)
    n, k = w.shape[0], w.shape[-1]
    if n == 0:
        return np.zeros(0)
    if radius is None:
        fit = fit if fit is not None else fit_dog(w)
        radius = fit.gamma * (k + 1) / 2
    elif isinstance(radius, str):
        if radius != FIXED_RADIUS:
            raise ValueError(f"radius={radius!r}: must be None, {FIXED_RADIUS!r} or a number of pixels")
        radius = (k + 1) / 4
    u = centre_surround_template(k, radius)
    flat = w.reshape(n, -1)
    dots = flat @ u.reshape(-1) if u.ndim == 2 else np.einsum("np,np->n", flat, u.reshape(n, -1))
    return dots / np.maximum(np.linalg.norm(flat, axis=1), _EPS)


# --------------------------------------------------------------------------- DoG fit


@dataclass
class DogFit:
    """Per-kernel least-squares DoG fit: ``w ~ amplitude * dog(k, gamma)`` (unit-lobe On kernel)."""

    gamma: np.ndarray  # (n,) best centre/surround ratio
    amplitude: np.ndarray  # (n,) > 0 On-centre, < 0 Off-centre; in units of the unit-lobe kernel
    r2: np.ndarray  # (n,) 1 - ||w - a d||^2 / ||w||^2, in [0, 1]

    @property
    def on(self) -> np.ndarray:
        return self.amplitude > 0

    @property
    def residual(self) -> np.ndarray:
        return 1.0 - self.r2


def gamma_grid(k: int, step: float = GAMMA_STEP) -> np.ndarray:
    """The gammas tried by :func:`fit_dog` for kernel size ``k``."""
    hi = min(GAMMA_MAX, max_gamma(k) - 1e-3)
    return np.arange(GAMMA_MIN, hi, step)


@functools.lru_cache(maxsize=32)
def _unit_dogs(k: int, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gammas (G,), unit-norm On DoG kernels flattened (G, k*k), their norms (G,)) for size ``k``."""
    g = gamma_grid(k, step)
    d = dog_kernels(k, torch.from_numpy(g), True).double().numpy().reshape(len(g), -1)
    norms = np.linalg.norm(d, axis=1)
    d = d / norms[:, None]
    d.setflags(write=False)
    return g, d, norms


def fit_dog(kernels, step: float = GAMMA_STEP) -> DogFit:
    """Least-squares DoG fit of every kernel over the gamma grid, vectorised (module docstring)."""
    w = _as_array(kernels)
    n, k = w.shape[0], w.shape[-1]
    if n == 0:
        return DogFit(np.zeros(0), np.zeros(0), np.zeros(0))
    if k % 2 == 0 or k < 3:
        raise ValueError(f"kernel size {k}: the DoG fit needs odd kernels of size >= 3")
    gammas, d_hat, norms = _unit_dogs(k, float(step))
    flat = w.reshape(n, -1)
    dots = flat @ d_hat.T  # (n, G): <w, d_hat>
    best = np.argmax(dots**2, axis=1)
    proj = dots[np.arange(n), best]
    wn2 = np.maximum((flat**2).sum(axis=1), _EPS)
    r2 = np.clip(proj**2 / wn2, 0.0, 1.0)
    return DogFit(gamma=gammas[best], amplitude=proj / norms[best], r2=r2)


# --------------------------------------------------------------------------- clustering


@dataclass
class Clustering:
    """k-means on normalised kernels, clusters named from their members' CSI.

    ``cluster`` (n,) is the k-means index (arbitrary); ``labels`` (n,) is the name ('on', 'off',
    'other') that matters.  ``names``, ``cluster_csi``, ``sizes`` are per cluster; ``centroids`` are
    in the normalised feature space, shaped (c, k, k).
    """

    labels: np.ndarray
    cluster: np.ndarray
    names: list[str]
    cluster_csi: np.ndarray
    sizes: np.ndarray
    centroids: np.ndarray
    normalise: str = "l2"
    threshold: float = MIN_THRESHOLD  # the one used

    def fractions(self, mask: np.ndarray | None = None) -> dict[str, float]:
        """Share of 'on', 'off', 'other' among all kernels (or those selected by ``mask``)."""
        lab = self.labels if mask is None else self.labels[mask]
        n = max(len(lab), 1)
        return {name: float(np.sum(lab == name)) / n if len(lab) else float("nan") for name in LABELS}


def auto_threshold(k: int) -> float:
    """The default naming threshold for k x k kernels: ``max(0.2, 1.5 / k)``, above chance (module docstring)."""
    return max(MIN_THRESHOLD, CHANCE_CSI / k)


def name_clusters(cluster_csi: np.ndarray, threshold: float = MIN_THRESHOLD, unique_names: bool = False) -> list[str]:
    """'on' if the cluster CSI is > threshold, 'off' if < -threshold, else 'other' (NaN -> 'other').

    ``unique_names``: of clusters sharing 'on' (or 'off') only the one with the largest ``|CSI|``
    keeps the name; the others become 'other'.
    """
    csi = np.asarray(cluster_csi, dtype=np.float64)
    names = ["on" if c > threshold else "off" if c < -threshold else "other" for c in np.nan_to_num(csi)]
    if unique_names:
        for label in ("on", "off"):
            idx = [i for i, nm in enumerate(names) if nm == label]
            if len(idx) > 1:
                keep = max(idx, key=lambda i: abs(csi[i]))
                for i in idx:
                    if i != keep:
                        names[i] = "other"
    return names


@functools.lru_cache(maxsize=1)
def _threadpools():
    """One controller (after scikit-learn's OpenMP is loaded): scanning the libraries costs ~15 ms a call."""
    import sklearn.cluster  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def cluster_kernels(kernels, n_clusters: int = 3, normalise: str = "l2", *, sign_symmetric: bool = False,
                    threshold: float | None = None, unique_names: bool = False, seed: int = 0, n_init: int = 4,
                    max_fit: int | None = None, csi: np.ndarray | None = None) -> Clustering:
    """k-means of ``kernels`` (n, k, k) into ``n_clusters`` named clusters (module docstring).

    ``threshold``: None = :func:`auto_threshold` of the kernel size.
    ``sign_symmetric``: fit k-means on the kernels and their negatives together (so On and Off are
    treated alike whatever their proportions), then assign only the real kernels.
    ``max_fit``: fit on at most this many kernels (seeded subset), then assign all to the nearest
    centroid; keeps the per-epoch metric cheap.  ``csi``: precomputed :func:`centre_surround_index`.
    Runs single-threaded: deterministic, and far faster than OpenMP on a busy machine.
    """
    from sklearn.cluster import KMeans

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r}: must be an integer >= 1")
    w = _as_array(kernels)
    n, k = w.shape[0], w.shape[-1]
    if threshold is None:
        threshold = auto_threshold(k)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}: must be in [0, 1)")
    x = normalise_kernels(w, normalise)
    if csi is None:
        csi = centre_surround_index(w)
    if n == 0:
        return Clustering(np.array([], dtype="<U5"), np.zeros(0, dtype=np.int64), [], np.zeros(0),
                          np.zeros(0, dtype=np.int64), np.zeros((0, k, k)), normalise, threshold)
    c = min(n_clusters, n)
    fit_x = x
    if max_fit is not None and n > max_fit:
        fit_x = x[np.sort(np.random.default_rng(seed).choice(n, size=max_fit, replace=False))]
    if sign_symmetric:
        fit_x = np.concatenate([fit_x, -fit_x])
    with _threadpools().limit(limits=1):
        km = KMeans(n_clusters=c, n_init=n_init, random_state=seed).fit(fit_x.astype(np.float64))
        cluster = km.predict(x) if fit_x is not x else km.labels_
    cluster = np.asarray(cluster, dtype=np.int64)
    sizes = np.bincount(cluster, minlength=c)
    sums = np.bincount(cluster, weights=csi, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        cluster_csi = np.where(sizes > 0, sums / np.maximum(sizes, 1), np.nan)
    names = name_clusters(cluster_csi, threshold, unique_names)
    labels = np.asarray(names, dtype="<U5")[cluster]
    return Clustering(labels, cluster, names, cluster_csi, sizes, km.cluster_centers_.reshape(c, k, k),
                      normalise, threshold)


# --------------------------------------------------------------------------- per-epoch metric


def _group_by_size(layers: Iterable[LayerKernels]) -> dict[int, list[LayerKernels]]:
    groups: dict[int, list[LayerKernels]] = {}
    for layer in layers:
        if len(layer):
            groups.setdefault(layer.kernel_size, []).append(layer)
    return groups


def epoch_kernel_metrics(model: nn.Module, *, n_clusters: int = 3, normalise: str = "l2",
                         threshold: float | None = None, seed: int = 0, max_fit: int = 2048,
                         n_init: int = 2) -> dict[str, float]:
    """Kernel statistics of every depthwise kernel of ``model``, for the trainer's ``metric_hooks``.

    Kernels of the same size are pooled and clustered together (k-means fitted on at most
    ``max_fit`` of them, seeded); the keys are ``kernels/on_fraction``, ``kernels/off_fraction``,
    ``kernels/other_fraction``, ``kernels/csi_mean`` (signed: > 0 means On dominates),
    ``kernels/csi_abs_mean`` (centre-surround strength of either polarity), ``kernels/dog_r2_mean``
    and ``kernels/count``.  A model without usable depthwise kernels gives ``{}``.  Deterministic.
    """
    groups = _group_by_size(depthwise_layers(model))
    if not groups:
        return {}
    if not all(np.isfinite(layer.kernels).all() for layers in groups.values() for layer in layers):
        # diverged weights: report NaN and let the trainer's loss check raise the real error
        return {f"kernels/{key}": float("nan") for key in
                (*(f"{name}_fraction" for name in LABELS), "csi_mean", "csi_abs_mean", "dog_r2_mean", "count")}
    counts = dict.fromkeys(LABELS, 0)
    csis, r2s = [], []
    for k, layers in sorted(groups.items()):
        w = np.concatenate([layer.kernels for layer in layers]).astype(np.float64)
        fit = fit_dog(w)
        csi = centre_surround_index(w, fit=fit)
        cl = cluster_kernels(w, n_clusters, normalise, threshold=threshold, seed=seed, n_init=n_init,
                             max_fit=max_fit, csi=csi)
        for name in LABELS:
            counts[name] += int(np.sum(cl.labels == name))
        csis.append(csi)
        r2s.append(fit.r2)
    csi_all, r2_all = np.concatenate(csis), np.concatenate(r2s)
    n = len(csi_all)
    out = {f"kernels/{name}_fraction": counts[name] / n for name in LABELS}
    out.update({
        "kernels/csi_mean": float(csi_all.mean()),
        "kernels/csi_abs_mean": float(np.abs(csi_all).mean()),
        "kernels/dog_r2_mean": float(r2_all.mean()),
        "kernels/count": float(n),
    })
    return out
