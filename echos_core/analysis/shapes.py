"""What are the kernels that are neither On nor Off?  A least-squares fit to a dictionary of shapes.

Every kernel ``w`` is compared with every template ``t`` of every family; the best amplitude is
``a = <w, t> / ||t||^2`` and the fit ``R^2 = 1 - ||w - a t||^2 / ||w||^2 = cos^2(w, t)``.  A family's
R^2 is the best over its templates; the kernel's family is the family with the highest R^2
(``'none'`` when that is below ``min_r2``).  One amplitude per template, so families are compared
on equal terms; the sign of the amplitude is free (an Off kernel is an On template with a < 0).

Families (``x`` = column offset, ``y`` = row offset from the middle pixel, ``d^2 = x^2 + y^2``;
``u = x cos(theta) + y sin(theta)``, ``v = -x sin(theta) + y cos(theta)``; ``G = exp(-d^2 / (2 s^2))``):

* ``dog``: the unit-lobe On-centre DoG of :mod:`echos_core.dog` (isotropic centre-surround;
  Laplacian-of-Gaussian-like shapes land here), over the gamma grid of :func:`~.kernels.fit_dog`;
* ``gaussian``: ``G``, a blob (low-pass, non-zero DC);
* ``d1``: first directional derivative of a Gaussian, ``u G`` (an oriented, smooth edge detector);
* ``d2``: second directional derivative, ``(u^2 / s^2 - 1) G`` (an oriented bar / ridge detector;
  theta = 0 is ``G_xx``, 90 degrees is ``G_yy``);
* ``saddle``: the trace-free second derivative ``(u^2 - v^2) G`` (theta = 45 degrees is ``G_xy``);
* ``edge``: an unwindowed step edge through the middle, ``sign(u)``.

Grids: ``s`` geometric from 0.5 to ``k / 2`` pixels (``n_sigma`` values), theta over ``[0, pi)``
(``[0, pi/2)`` for ``saddle``, whose templates repeat with opposite sign) in ``n_orient`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import _as_array, _unit_dogs, GAMMA_STEP

__all__ = ["FAMILIES", "ShapeFit", "shape_templates", "fit_shapes"]

FAMILIES = ("dog", "gaussian", "d1", "d2", "saddle", "edge")
_EPS = 1e-12


def _grids(k: int, n_sigma: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = (k - 1) / 2
    ax = np.arange(k, dtype=np.float64) - h
    y, x = np.meshgrid(ax, ax, indexing="ij")
    sig = np.geomspace(0.5, k / 2, n_sigma)
    return x, y, sig


def shape_templates(k: int, families: tuple[str, ...] = FAMILIES, n_sigma: int = 8,
                    n_orient: int = 16) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{family: (templates (m, k, k) unit-norm, params (m, 2))}``; params are (size, theta): size is
    sigma in pixels (gamma for 'dog', NaN for 'edge'), theta in radians (NaN for 'dog' and 'gaussian')."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families={unknown}: unknown; known: {', '.join(FAMILIES)}")
    x, y, sig = _grids(k, n_sigma)
    s = sig[:, None, None, None]  # (S, 1, 1, 1) against (1, T, k, k)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def oriented(n_theta: int, period: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        th = np.arange(n_theta) * period / n_theta
        c, sn = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
        u = x[None] * c + y[None] * sn  # (T, k, k)
        v = -x[None] * sn + y[None] * c
        return th, u[None], v[None]

    g = np.exp(-(x**2 + y**2)[None, None] / (2 * s**2))  # (S, 1, k, k)
    for fam in families:
        if fam == "dog":
            gam, d, _ = _unit_dogs(k, GAMMA_STEP)
            t = d.reshape(-1, k, k)
            params = np.stack([gam, np.full_like(gam, np.nan)], axis=1)
        elif fam == "gaussian":
            t = g[:, 0]
            params = np.stack([sig, np.full_like(sig, np.nan)], axis=1)
        else:
            n_theta = n_orient // 2 if fam == "saddle" else n_orient
            period = np.pi / 2 if fam == "saddle" else np.pi
            th, u, v = oriented(n_theta, period)
            if fam == "d1":
                t = u * g
            elif fam == "d2":
                t = (u**2 / s**2 - 1.0) * g
            elif fam == "saddle":
                t = (u**2 - v**2) * g
            else:  # edge: one template per orientation (no sigma); drop orientations that pixelate alike
                t, params = _unique(np.sign(np.round(u[0], 9)), np.stack([np.full_like(th, np.nan), th], axis=1))
                out[fam] = (_unit(t), params)
                continue
            t = t.reshape(-1, k, k)
            params = np.stack(np.broadcast_arrays(sig[:, None], th[None, :]), axis=-1).reshape(-1, 2)
        out[fam] = (_unit(t), params)
    return out


def _unit(t: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(t.reshape(len(t), -1), axis=1)
    return t / np.maximum(n, _EPS)[:, None, None]


def _unique(t: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, idx = np.unique(np.round(t.reshape(len(t), -1), 9), axis=0, return_index=True)
    idx = np.sort(idx)
    return t[idx], params[idx]


@dataclass
class ShapeFit:
    """Per kernel: best ``family`` ('none' if R^2 < min_r2), its ``r2``, ``amplitude`` (against the
    unit-norm template, so ``|amplitude| = R ||w||``) and ``params`` (size, theta) as in
    :func:`shape_templates`; ``family_r2[f]`` = best R^2 in family f."""

    family: np.ndarray
    r2: np.ndarray
    amplitude: np.ndarray
    params: np.ndarray
    family_r2: dict[str, np.ndarray]
    min_r2: float

    def fractions(self, mask: np.ndarray | None = None) -> dict[str, float]:
        fam = self.family if mask is None else self.family[mask]
        n = max(len(fam), 1)
        return {f: float(np.sum(fam == f)) / n for f in (*self.family_r2, "none")}


def fit_shapes(kernels, families: tuple[str, ...] = FAMILIES, *, min_r2: float = 0.5, n_sigma: int = 8,
               n_orient: int = 16) -> ShapeFit:
    """Fit every kernel (n, k, k) (odd k >= 3) against every family's templates, vectorised."""
    w = _as_array(kernels)
    n, k = w.shape[0], w.shape[-1]
    fams = tuple(families)
    if n == 0:
        z = np.zeros(0)
        return ShapeFit(np.array([], dtype="<U8"), z, z, np.zeros((0, 2)), {f: z for f in fams}, min_r2)
    temps = shape_templates(k, fams, n_sigma, n_orient)
    flat = w.reshape(n, -1)
    wn2 = np.maximum((flat**2).sum(axis=1), _EPS)
    best_r2 = np.full((len(fams), n), -1.0)
    best_amp = np.zeros((len(fams), n))
    best_par = np.zeros((len(fams), n, 2))
    rows = np.arange(n)
    for i, fam in enumerate(fams):
        t, params = temps[fam]
        dots = flat @ t.reshape(len(t), -1).T  # (n, m); templates are unit-norm so a = dot
        j = np.argmax(dots**2, axis=1)
        best_r2[i] = np.clip(dots[rows, j] ** 2 / wn2, 0.0, 1.0)
        best_amp[i] = dots[rows, j]
        best_par[i] = params[j]
    win = np.argmax(best_r2, axis=0)
    r2 = best_r2[win, rows]
    family = np.asarray(fams, dtype="<U8")[win]
    family = np.where(r2 >= min_r2, family, "none")
    return ShapeFit(family, r2, best_amp[win, rows], best_par[win, rows],
                    {f: best_r2[i] for i, f in enumerate(fams)}, min_r2)
