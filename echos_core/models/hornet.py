"""HorNet: high-order spatial interactions with recursive gated convolutions.

Rao et al., "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated
Convolutions", NeurIPS 2022 (arXiv 2207.14284).  This is the paper's plain variant,
whose gnConv mixes space with one depthwise convolution (HorNet-T/S "7x7"), not the
global filter (FFT) variant.  The layout is ConvNeXt's: a patchify stem, four stages
joined by 2x2 stride-2 downsampling, the interaction order rising 2, 3, 4, 5 by stage.

Registered with timm (``timm.create_model('hornet_tiny', kernel_size=9)`` works once
``echos_core.models`` is imported): hornet_tiny, hornet_small and hornet_cifar.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["GnConv", "HorNetBlock", "HorNet"]


class GnConv(nn.Module):
    """Recursive gated convolution of order n (the paper's g^n Conv).

    A 1x1 conv maps C channels to 2C, split into p0 (C / 2^(n-1) channels) and q
    (widths C / 2^(n-1), ..., C / 2, C).  One depthwise conv over all of q gives the n
    gates; then p_{k+1} = g_k(p_k) * gate_k, where g_k is a 1x1 conv that doubles the
    width, and a last 1x1 conv mixes p_n.  ``scale`` multiplies the gates (1/3 in the
    paper's 7x7 models).
    """

    def __init__(self, dim: int, order: int, kernel_size: int = 7, scale: float = 1 / 3):
        super().__init__()
        if dim % 2 ** (order - 1):
            raise ValueError(f"gnConv of order {order} needs a width divisible by {2 ** (order - 1)}, got {dim}")
        self.widths = [dim // 2 ** k for k in reversed(range(order))]
        self.scale = scale
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        q = sum(self.widths)
        self.dwconv = nn.Conv2d(q, q, kernel_size, padding=kernel_size // 2, groups=q)
        self.pws = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(self.widths[:-1], self.widths[1:]))
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.proj_in(x).split([self.widths[0], sum(self.widths)], dim=1)
        gates = (self.dwconv(q) * self.scale).split(self.widths, dim=1)
        p = p * gates[0]
        for pw, gate in zip(self.pws, gates[1:]):
            p = pw(p) * gate
        return self.proj_out(p)


class HorNetBlock(nn.Module):
    """x + gamma1 * gnConv(LN(x)), then x + gamma2 * MLP(LN(x)); both residuals with drop path."""

    def __init__(self, dim: int, order: int, kernel_size: int, drop_path: float = 0.0,
                 ls_init_value: float = 1e-6, gate_scale: float = 1 / 3):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.gnconv = GnConv(dim, order, kernel_size, gate_scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma1 = nn.Parameter(torch.full((dim,), ls_init_value))
        self.gamma2 = nn.Parameter(torch.full((dim,), ls_init_value))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gnconv(self.norm1(x)) * self.gamma1[:, None, None])
        y = self.mlp(self.norm2(x.permute(0, 2, 3, 1))) * self.gamma2  # channels last
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNet(nn.Module):
    """Stem (patch_size x patch_size conv, stride patch_size) + four gnConv stages + LN + linear head."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (2, 3, 18, 2),
        dims: tuple[int, ...] = (64, 128, 256, 512),
        orders: tuple[int, ...] = (2, 3, 4, 5),
        kernel_size: int = 7,
        patch_size: int = 4,
        gate_scale: float = 1 / 3,
        ls_init_value: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size),
                                  LayerNorm2d(dims[0], eps=1e-6))
        n = sum(depths)
        rates = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]  # rises linearly over all blocks
        stages, self.feature_info = [], []
        for i, (depth, dim, order) in enumerate(zip(depths, dims, orders)):
            down = (nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, stride=2))
                    if i else nn.Identity())
            first = sum(depths[:i])
            blocks = [HorNetBlock(dim, order, kernel_size, rates[first + j], ls_init_value, gate_scale)
                      for j in range(depth)]
            stages.append(nn.Sequential(down, *blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    """The paper's init: truncated normal (std 0.02) weights, zero biases, for convs and linears."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _cfg(**kwargs) -> dict:
    cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9,
               interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv="stem.0", classifier="head", license="mit")
    return {**cfg, **kwargs}


default_cfgs = generate_default_cfgs({
    "hornet_tiny": _cfg(),
    "hornet_small": _cfg(),
    "hornet_cifar": _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0),
})


def _create_hornet(variant: str, pretrained: bool = False, **kwargs) -> HorNet:
    if pretrained:
        raise ValueError(f"{variant}: echos has no pretrained HorNet weights")
    return build_model_with_cfg(HorNet, variant, pretrained, **kwargs)


@register_model
def hornet_tiny(pretrained: bool = False, **kwargs) -> HorNet:
    """HorNet-T 7x7: widths 64-512, depths 2-3-18-2 (22.4M parameters at 1000 classes)."""
    args = dict(depths=(2, 3, 18, 2), dims=(64, 128, 256, 512))
    return _create_hornet("hornet_tiny", pretrained, **dict(args, **kwargs))


@register_model
def hornet_small(pretrained: bool = False, **kwargs) -> HorNet:
    """HorNet-S 7x7: widths 96-768, depths 2-3-18-2 (49.5M parameters at 1000 classes)."""
    args = dict(depths=(2, 3, 18, 2), dims=(96, 192, 384, 768))
    return _create_hornet("hornet_small", pretrained, **dict(args, **kwargs))


@register_model
def hornet_cifar(pretrained: bool = False, **kwargs) -> HorNet:
    """For 32x32 images: a 1x1 stem (all spatial mixing is depthwise), widths 32-256,
    depths 2-2-4-2, so the stages see 32, 16, 8 and 4 pixels."""
    args = dict(depths=(2, 2, 4, 2), dims=(32, 64, 128, 256), patch_size=1)
    return _create_hornet("hornet_cifar", pretrained, **dict(args, **kwargs))
