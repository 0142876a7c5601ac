"""Difference-of-Gaussians (DoG) kernels, exactly as in ``METHOD.md``.

For an odd kernel size ``k`` and a centre/surround ratio ``gamma`` in (0, 1):

* pixel offsets ``x, y`` in ``{-(k-1)/2 .. (k-1)/2}``, ``d^2 = x^2 + y^2``;
* centre radius ``r = gamma (k + 1) / 2``, so the surround reaches ``r / gamma = (k + 1) / 2``;
* ``sigma = r / (2 gamma) * sqrt((1 - gamma^2) / -ln gamma)``;
* centre ``c = gamma^-2 exp(-d^2 / (2 (gamma sigma)^2))``, surround ``s = exp(-d^2 / (2 sigma^2))``,
  ``v = c - s``: zero crossing at ``d = r``, equal mass in the continuous plane.

Normalisations:

* ``"lobe"`` (default): the centre pixels (``d <= r``) are divided by their sum and the surround
  pixels by the absolute sum of theirs, so the lobes sum to +1 and -1 and the DC response is zero.
  Signs never flip.
* ``"oocs"``: the OOCS amplitudes (Babaiee et al., ICML 2021): ``A_c c - A_s s`` with ``A_c, A_s``
  solved so the centre set sums to +1 and the surround set to -1.  Pixels may change sign, and the
  2x2 system is singular for some ``(k, gamma)``; that is a ``ValueError``.

An Off-centre kernel is minus the On-centre kernel.  Everything is computed in float64 and
returned as float32; :func:`dog_kernels` is the vectorised form used by the initialiser.
"""

from __future__ import annotations

import math

import lazy_loader

torch = lazy_loader.load("torch")  # imported on first use: echos_core (and its init registry) load without it

__all__ = ["dog_kernel", "dog_kernels", "check_dog", "max_gamma", "NORMALISATIONS"]

NORMALISATIONS = ("lobe", "oocs")
_EPS = 1e-9


def check_dog(kernel_size: int, gamma: float, normalisation: str = "lobe") -> None:
    """Raise ``ValueError`` naming the value and the rule if ``(kernel_size, gamma)`` is not a valid DoG."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"kernel_size={kernel_size!r}: must be an integer")
    if kernel_size < 3:
        raise ValueError(f"kernel_size={kernel_size}: must be >= 3")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size}: must be odd (the kernel needs a centre pixel)")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise ValueError(f"gamma={gamma!r}: must be a finite number")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma={gamma}: must be in the open interval (0, 1)")
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r}: must be one of {', '.join(NORMALISATIONS)}")
    g_max = max_gamma(kernel_size)
    if gamma >= g_max:
        raise ValueError(
            f"gamma={gamma} with kernel_size={kernel_size}: leaves no surround pixel; "
            f"gamma must be < {g_max:.4f} for this kernel size")


def max_gamma(kernel_size: int) -> float:
    """The supremum of gammas that leave at least one surround pixel (``d > r``) in a ``k x k`` kernel."""
    h = (kernel_size - 1) / 2
    return math.sqrt(2.0) * h / ((kernel_size + 1) / 2)


def _offsets_d2(kernel_size: int) -> torch.Tensor:
    h = (kernel_size - 1) // 2
    x = torch.arange(-h, h + 1, dtype=torch.float64)
    return x[None, :] ** 2 + x[:, None] ** 2  # (k, k)


def dog_kernels(kernel_size: int, gammas: torch.Tensor, on: torch.Tensor | bool = True,
                normalisation: str = "lobe") -> torch.Tensor:
    """A batch of DoG kernels: ``gammas`` (n,) and ``on`` (n,) bool -> float32 tensor (n, k, k).

    Every gamma is checked; an invalid one raises ``ValueError`` before anything is returned.
    """
    gammas = torch.as_tensor(gammas, dtype=torch.float64).reshape(-1)
    if gammas.numel() == 0:
        return torch.zeros(0, kernel_size, kernel_size)
    check_dog(kernel_size, float(gammas.min()), normalisation)
    check_dog(kernel_size, float(gammas.max()), normalisation)

    d2 = _offsets_d2(kernel_size)[None]  # (1, k, k)
    g = gammas[:, None, None]  # (n, 1, 1)
    r = g * (kernel_size + 1) / 2
    sigma = r / (2 * g) * torch.sqrt((1 - g**2) / (-torch.log(g)))
    c = g**-2 * torch.exp(-d2 / (2 * (g * sigma) ** 2))
    s = torch.exp(-d2 / (2 * sigma**2))
    centre = d2 <= r**2 + _EPS  # (n, k, k); boundary pixels (v ~ 0) count as centre

    if normalisation == "lobe":
        v = c - s
        pos = torch.where(centre, v, 0.0).sum(dim=(1, 2), keepdim=True)
        neg = torch.where(centre, 0.0, v).sum(dim=(1, 2), keepdim=True)
        out = torch.where(centre, v / pos, v / neg.abs())
    else:  # oocs: A_c * sum_C c - A_s * sum_C s = 1 ; A_c * sum_S c - A_s * sum_S s = -1
        cc = torch.where(centre, c, 0.0).sum(dim=(1, 2))
        sc = torch.where(centre, s, 0.0).sum(dim=(1, 2))
        cs = torch.where(centre, 0.0, c).sum(dim=(1, 2))
        ss = torch.where(centre, 0.0, s).sum(dim=(1, 2))
        det = -cc * ss + sc * cs
        bad = det.abs() < 1e-12
        if bool(bad.any()):
            gb = float(gammas[bad][0])
            raise ValueError(f"gamma={gb} with kernel_size={kernel_size}: the OOCS amplitude system is singular; "
                             "use normalisation='lobe' or another gamma")
        a_c = (-ss - sc) / det  # Cramer's rule on [[cc, -sc], [cs, -ss]] @ [a_c, a_s] = [1, -1]
        a_s = (-cc - cs) / det
        out = a_c[:, None, None] * c - a_s[:, None, None] * s

    on_t = torch.as_tensor(on, dtype=torch.bool).reshape(-1)
    sign = torch.where(on_t, 1.0, -1.0).to(torch.float64)
    if sign.numel() == 1:
        sign = sign.expand(out.shape[0])
    elif sign.numel() != out.shape[0]:
        raise ValueError(f"on has {sign.numel()} entries: must have one per gamma ({out.shape[0]})")
    return (out * sign[:, None, None]).to(torch.float32)


def dog_kernel(kernel_size: int, gamma: float, on: bool = True, normalisation: str = "lobe") -> torch.Tensor:
    """One ``k x k`` DoG kernel (float32).  ``on=False`` gives the Off-centre kernel (minus the On one).

    >>> k = dog_kernel(5, 0.5)
    >>> round(float(k[2, 2]), 3), round(float(k.sum()), 6)
    (0.415, 0.0)
    """
    check_dog(kernel_size, gamma, normalisation)
    return dog_kernels(kernel_size, torch.tensor([float(gamma)]), torch.tensor([bool(on)]), normalisation)[0]
