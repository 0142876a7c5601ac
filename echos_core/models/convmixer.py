"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", TMLR 2023) at CIFAR size.

The network is timm's :class:`~timm.models.convmixer.ConvMixer`; this module adds two
names to timm's registry and a way to change the architecture of any registered one:

- ``convmixer_cifar``: ConvMixer-256/8, kernel 5, patch 2, GELU: the locuslab
  CIFAR-10 model (about 92.5% in 25 epochs), 594,186 parameters at 10 classes.
- ``convmixer``: a small generic one whose four numbers the config sets; defaults
  dim 128, depth 4, kernel 5, patch 2 (84,618 parameters at 10 classes).
"""

from __future__ import annotations

import timm
import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convmixer import ConvMixer

__all__ = ["create_convmixer"]


def create_convmixer(name: str, **kwargs) -> ConvMixer:
    """Any registered ConvMixer with some of dim, depth, kernel_size, patch_size replaced.

    timm's own entry points (``convmixer_768_32``, ...) fix these four, so passing them
    again is a TypeError; instead the architecture is read back from a weightless copy
    built on the meta device, updated with ``kwargs`` and built again.
    """
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False)
    arch = dict(
        dim=ref.stem[0].out_channels,
        depth=len(ref.blocks),
        kernel_size=ref.blocks[0][0].fn[0].kernel_size[0],  # block = Residual(depthwise conv, act, BN), ...
        patch_size=ref.stem[0].kernel_size[0],
        act_layer=type(ref.stem[1]),
    )
    return build_model_with_cfg(ConvMixer, name, pretrained=False, **{**arch, **kwargs})


default_cfgs = generate_default_cfgs({
    name: dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0,
               interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv="stem.0", classifier="head", license="mit")
    for name in ("convmixer_cifar", "convmixer")
})


def _create(variant: str, pretrained: bool, **kwargs) -> ConvMixer:
    if pretrained:
        raise ValueError(f"{variant}: echos has no pretrained ConvMixer weights")
    return build_model_with_cfg(ConvMixer, variant, pretrained, **kwargs)


@register_model
def convmixer_cifar(pretrained: bool = False, **kwargs) -> ConvMixer:
    """ConvMixer-256/8, kernel 5, patch 2 (locuslab/convmixer-cifar10)."""
    args = dict(dim=256, depth=8, kernel_size=5, patch_size=2, act_layer=nn.GELU)
    return _create("convmixer_cifar", pretrained, **dict(args, **kwargs))


@register_model
def convmixer(pretrained: bool = False, **kwargs) -> ConvMixer:
    """A small ConvMixer meant to be sized by the config (model.dim, depth, kernel_size, patch_size)."""
    args = dict(dim=128, depth=4, kernel_size=5, patch_size=2, act_layer=nn.GELU)
    return _create("convmixer", pretrained, **dict(args, **kwargs))
