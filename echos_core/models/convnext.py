"""A CIFAR-sized ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022).

timm's ConvNeXts patchify by 4 and then halve three times, so a 32x32 image leaves
them a 1x1 map.  ``convnext_cifar`` is timm's :class:`~timm.models.convnext.ConvNeXt`
with a 1x1 stem instead (all spatial mixing is then depthwise), widths 32-256 and
depths 2-2-4-2, so its stages see 32, 16, 8 and 4 pixels: 1,901,514 parameters at 10
classes.  (timm downsamples in stage 0 when the patch is 2, so patch 1 is the only
stem that keeps a 4x4 last map on 32x32 inputs.)
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt

__all__: list[str] = []

default_cfgs = generate_default_cfgs({
    "convnext_cifar": dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
                           interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                           first_conv="stem.0", classifier="head.fc", license="mit"),
})


@register_model
def convnext_cifar(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt for 32x32 images: 1x1 stem, widths 32-256, depths 2-2-4-2, kernel 7."""
    if pretrained:
        raise ValueError("convnext_cifar: echos has no pretrained weights for it")
    args = dict(depths=(2, 2, 4, 2), dims=(32, 64, 128, 256), patch_size=1)
    return build_model_with_cfg(ConvNeXt, "convnext_cifar", pretrained,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
                                **dict(args, **kwargs))
