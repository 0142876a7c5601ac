"""Init schemes for the depthwise convolutions of a model, in one registry.

Depthwise convolutions are found by structure, never by name: an ``nn.Conv2d`` (or subclass)
whose ``groups`` equals its ``in_channels`` (> 1), so every kernel sees one input channel.
Nothing else in the model is touched.

Schemes (registered in :mod:`echos_core.registry` with the config keys each reads;
:func:`register_init` adds more):

* ``default``: leave the model's own init (timm's, or the module's);
* ``kaiming``: Kaiming-normal (fan-in, ReLU gain), the paper's baseline;
* ``dog``: difference-of-Gaussians kernels (:mod:`echos_core.dog`), gamma uniform in
  ``[gamma_low, gamma_high]`` per kernel, exactly ``round(on_ratio * m)`` On-centre kernels among
  the ``m = round(fraction * n)`` replaced kernels of each layer, at random positions;
* ``random-field``: the structured baseline of Trockman et al. (ICLR 2023): every kernel drawn
  from ``N(0, Sigma)`` with ``Sigma_ij = exp(-|p_i - p_j|^2 / (2 length_scale^2))``.

Scale rules (``init.scale``), applied to every replaced kernel of ``dog`` and ``random-field``:

* ``unit``: the construction's own scale; DoG lobes sum to +1/-1, random-field kernels get L2 norm 1;
* ``kaiming``: L2 norm ``gain * sqrt(k*k / fan_in) = sqrt(2)``, Kaiming-normal's expected norm;
* ``match``: the root-mean-square L2 norm of the kernels of that layer before replacement.

``noise`` adds Gaussian noise with std ``noise * rms(kernel)`` to each replaced kernel after
scaling.  All randomness comes from one ``torch.Generator`` seeded with the run seed: the same
seed gives bit-identical weights.  Biases are left as the model made them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from .config import InitConfig
from .dog import check_dog, dog_kernels
from .validation import ConfigError
from .registry import INIT_SCHEMES, applicable_keys, get_init, register_init

__all__ = [
    "INIT_SCHEMES",
    "register_init",
    "get_init",
    "applicable_keys",
    "find_depthwise_convs",
    "find_dense_convs",
    "check_init",
    "apply_init",
    "InitReport",
    "LayerReport",
    "random_field_kernels",
]

# --------------------------------------------------------------------------- finding convolutions


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.groups == m.in_channels and m.weight.shape[1] == 1


def find_depthwise_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every depthwise ``nn.Conv2d`` (one input channel per kernel), with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if _is_depthwise(m)]


def find_dense_convs(model: nn.Module, min_kernel: int = 2) -> list[tuple[str, nn.Conv2d]]:
    """Regular (``groups == 1``) spatial convolutions, for comparison with the depthwise ones."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and min(m.kernel_size) >= min_kernel]


# --------------------------------------------------------------------------- reports


@dataclass
class LayerReport:
    name: str = ""
    kernel_size: int = 0
    kernels: int = 0
    changed: int = 0
    on: int = 0
    off: int = 0
    norm_before: float = 0.0  # RMS L2 norm of the layer's kernels before init
    norm_after: float = 0.0


@dataclass
class InitReport:
    scheme: str
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def kernels(self) -> int:
        return sum(layer.kernels for layer in self.layers)

    @property
    def changed(self) -> int:
        return sum(layer.changed for layer in self.layers)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "kernels": self.kernels, "changed": self.changed,
                "layers": [asdict(layer) for layer in self.layers]}

    def summary(self) -> str:
        return (f"init {self.scheme}: changed {self.changed} of {self.kernels} depthwise kernels "
                f"in {len(self.layers)} layers")


# --------------------------------------------------------------------------- helpers


def _kernel_size(conv: nn.Conv2d) -> int:
    kh, kw = conv.kernel_size
    return kh if kh == kw else -1


def _rms_norm(w: torch.Tensor) -> float:
    return float(w.flatten(1).norm(dim=1).pow(2).mean().sqrt()) if w.shape[0] else 0.0


def _kaiming_norm(conv: nn.Conv2d) -> float:
    """Expected L2 norm of one Kaiming-normal (fan-in, ReLU) kernel: gain * sqrt(k*k / fan_in)."""
    kh, kw = conv.kernel_size
    fan_in = conv.weight.shape[1] * kh * kw
    return math.sqrt(2.0) * math.sqrt(kh * kw / fan_in)


def _choose(n: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Indices of ``round(fraction * n)`` kernels, at random positions."""
    m = int(round(fraction * n))
    return torch.randperm(n, generator=g)[:m]


def _rescale(kernels: torch.Tensor, target_norm: float | None) -> torch.Tensor:
    if target_norm is None:
        return kernels
    norms = kernels.flatten(1).norm(dim=1).clamp_min(1e-12)
    return kernels * (target_norm / norms)[:, None, None]


def _target_norm(cfg: InitConfig, conv: nn.Conv2d, norm_before: float, unit: float | None) -> float | None:
    if cfg.scale == "unit":
        return unit
    if cfg.scale == "kaiming":
        return _kaiming_norm(conv)
    return norm_before  # match


def _write(conv: nn.Conv2d, idx: torch.Tensor, kernels: torch.Tensor, cfg: InitConfig, g: torch.Generator) -> None:
    if cfg.noise > 0 and kernels.numel():
        rms = kernels.flatten(1).pow(2).mean(dim=1).sqrt()[:, None, None]
        kernels = kernels + cfg.noise * rms * torch.randn(kernels.shape, generator=g, dtype=kernels.dtype)
    w = conv.weight
    with torch.no_grad():
        w[idx, 0] = kernels.to(device=w.device, dtype=w.dtype)


def _report(name: str, conv: nn.Conv2d, changed: int, on: int, off: int, before: float) -> LayerReport:
    return LayerReport(name=name, kernel_size=_kernel_size(conv), kernels=conv.weight.shape[0], changed=changed,
                       on=on, off=off, norm_before=before, norm_after=_rms_norm(conv.weight.detach()))


# --------------------------------------------------------------------------- schemes


@register_init("dog", keys=("init.gamma_low", "init.gamma_high", "init.on_ratio", "init.scale",
                             "init.fraction", "init.noise", "init.normalisation"))
def init_dog_(conv: nn.Conv2d, cfg: InitConfig, g: torch.Generator, name: str = "") -> LayerReport:
    k = _kernel_size(conv)
    w = conv.weight.detach()
    before = _rms_norm(w)
    idx = _choose(w.shape[0], cfg.fraction, g)
    m = len(idx)
    n_on = int(round(cfg.on_ratio * m))
    on = torch.zeros(m, dtype=torch.bool)
    on[torch.randperm(m, generator=g)[:n_on]] = True
    gammas = cfg.gamma_low + (cfg.gamma_high - cfg.gamma_low) * torch.rand(m, generator=g, dtype=torch.float64)
    kernels = dog_kernels(k, gammas, on, cfg.normalisation)
    kernels = _rescale(kernels, _target_norm(cfg, conv, before, unit=None))
    _write(conv, idx, kernels, cfg, g)
    return _report(name, conv, m, n_on, m - n_on, before)


@register_init("kaiming", keys=("init.fraction",), baseline=True)
def init_kaiming_(conv: nn.Conv2d, cfg: InitConfig, g: torch.Generator, name: str = "") -> LayerReport:
    w = conv.weight.detach()
    before = _rms_norm(w)
    idx = _choose(w.shape[0], cfg.fraction, g)
    kh, kw = conv.kernel_size
    std = math.sqrt(2.0) / math.sqrt(w.shape[1] * kh * kw)
    kernels = std * torch.randn((len(idx), kh, kw), generator=g)
    with torch.no_grad():
        conv.weight[idx, 0] = kernels.to(device=w.device, dtype=w.dtype)
    return _report(name, conv, len(idx), 0, 0, before)


@register_init("default", baseline=True)
def init_default_(conv: nn.Conv2d, cfg: InitConfig, g: torch.Generator, name: str = "") -> LayerReport:
    before = _rms_norm(conv.weight.detach())
    return _report(name, conv, 0, 0, 0, before)


def random_field_kernels(n: int, kernel_size: int, length_scale: float, g: torch.Generator) -> torch.Tensor:
    """``n`` kernels from ``N(0, Sigma)``, ``Sigma_ij = exp(-|p_i - p_j|^2 / (2 l^2))`` (unit marginal variance)."""
    h = (kernel_size - 1) / 2
    ax = torch.arange(kernel_size, dtype=torch.float64) - h
    pts = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), dim=-1).reshape(-1, 2)
    sigma = torch.exp(-torch.cdist(pts, pts).pow(2) / (2 * length_scale**2))
    chol = torch.linalg.cholesky(sigma + 1e-6 * torch.eye(len(pts), dtype=torch.float64))
    z = torch.randn((n, len(pts)), generator=g, dtype=torch.float64)
    return (z @ chol.T).reshape(n, kernel_size, kernel_size).to(torch.float32)


@register_init("random-field", keys=("init.scale", "init.fraction", "init.noise", "init.length_scale"))
def init_random_field_(conv: nn.Conv2d, cfg: InitConfig, g: torch.Generator, name: str = "") -> LayerReport:
    kh, kw = conv.kernel_size
    w = conv.weight.detach()
    before = _rms_norm(w)
    idx = _choose(w.shape[0], cfg.fraction, g)
    kernels = random_field_kernels(len(idx), kh, cfg.length_scale, g) if kh == kw else None
    if kernels is None:
        raise ConfigError(f"{name}: kernel {kh}x{kw} is not square; random-field needs square kernels")
    kernels = _rescale(kernels, _target_norm(cfg, conv, before, unit=1.0))
    _write(conv, idx, kernels, cfg, g)
    return _report(name, conv, len(idx), 0, 0, before)


# --------------------------------------------------------------------------- entry points


def check_init(model: nn.Module, cfg: InitConfig) -> list[tuple[str, nn.Conv2d]]:
    """Validate ``cfg`` against ``model`` before any weight is touched; returns the depthwise convs.

    Raises :class:`ConfigError` (one line) for an unknown scheme, a model without depthwise convolutions,
    or a DoG that some layer's kernel size cannot hold over ``[gamma_low, gamma_high]``.
    """
    get_init(cfg.scheme)
    convs = find_depthwise_convs(model)
    if not convs:
        raise ConfigError(f"model {type(model).__name__}: has no depthwise convolutions "
                         "(nn.Conv2d with groups == in_channels); echos inits only depthwise kernels")
    if cfg.scheme == "dog":
        for name, conv in convs:
            k = _kernel_size(conv)
            if k < 0:
                raise ConfigError(f"{name}: kernel {tuple(conv.kernel_size)} is not square; DoG needs square kernels")
            try:
                check_dog(k, cfg.gamma_low, cfg.normalisation)
                check_dog(k, cfg.gamma_high, cfg.normalisation)
            except ValueError as e:
                raise ConfigError(f"init.gamma_low/gamma_high=[{cfg.gamma_low}, {cfg.gamma_high}] for layer {name}: {e}") from None
    return convs


def apply_init(model: nn.Module, cfg: InitConfig, seed: int | torch.Generator = 0) -> InitReport:
    """Initialise every depthwise convolution of ``model`` in place with scheme ``cfg.scheme``."""
    convs = check_init(model, cfg)
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    fn = get_init(cfg.scheme)
    report = InitReport(scheme=cfg.scheme)
    for name, conv in convs:
        report.layers.append(fn(conv, cfg, g, name=name))
    return report


def depthwise_kernels(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, weight (n, k, k)) of every depthwise conv, detached on CPU."""
    for name, conv in find_depthwise_convs(model):
        yield name, conv.weight.detach().float().cpu()[:, 0]
