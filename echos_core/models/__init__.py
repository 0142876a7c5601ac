"""Networks with depthwise convolutions, built from a :class:`ModelConfig`.

Any timm model works by name (never with pretrained weights).  Importing this package
registers echos' own models with timm: ``convmixer``, ``convmixer_cifar``,
``convnext_cifar``, ``hornet_tiny``, ``hornet_small`` and ``hornet_cifar``.

The architecture overrides of the config apply per family; the family of a model is the
module holding its timm entry point (``timm.models.convnext``, ``echos_core.models.hornet``):

============  ===========  =====================  ======  ==========
family        kernel_size  dim                    depth   patch_size
============  ===========  =====================  ======  ==========
ConvNeXt      every stage  widths dim x 1,2,4,8   -       stem patch
HorNet        every stage  widths dim x 1,2,4,8   -       stem patch
ConvMixer     every block  channels               blocks  stem patch
============  ===========  =====================  ======  ==========

Anything else (mobilenetv3_small_100, efficientnet_b0, ...) takes none of them.  A value
a model cannot take is a one-line :class:`~echos_core.config.ConfigError` (a ValueError)
naming the field, the value and the rule, never a silent no-op.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from torch import nn
from timm.models import model_entrypoint, split_model_name_tag

from ..config import ConfigError, ModelConfig
from ..inits import find_depthwise_convs
from . import convmixer, convnext, hornet  # noqa: F401  (registers the models with timm)

__all__ = ["create_model", "model_family"]

FAMILIES = {"convnext": "ConvNeXt", "hornet": "HorNet", "convmixer": "ConvMixer"}

# family -> {config field: constructor keyword}; "dims" gets the four stage widths
_KEYWORDS = {
    "convnext": dict(kernel_size="kernel_sizes", dim="dims", patch_size="patch_size"),
    "hornet": dict(kernel_size="kernel_size", dim="dims", patch_size="patch_size"),
    "convmixer": dict(kernel_size="kernel_size", dim="dim", depth="depth", patch_size="patch_size"),
}


def model_family(name: str) -> str | None:
    """'convnext', 'hornet', 'convmixer' or None (a timm model without overrides)."""
    module = model_entrypoint(split_model_name_tag(name)[0]).__module__.rsplit(".", 1)[-1]
    return module if module in FAMILIES else None


def create_model(cfg: ModelConfig, num_classes: int, in_chans: int = 3, image_size: int | None = None) -> nn.Module:
    """Build ``cfg.name`` with its overrides, randomly initialised (timm's or the paper's init).

    With ``image_size`` the model also runs one zero image of that size (eval mode, no
    grad, no random numbers drawn), so an input too small for it fails here.  ``cfg`` is validated
    (:class:`~echos_core.config.Config` validates at its boundary; nothing here validates it again).
    """
    name = cfg.name
    if not timm.is_model(name):
        raise ConfigError("model.name", name, f"unknown model; {_suggest(name)}")
    family = model_family(name)
    kwargs = _overrides(cfg, name, family)
    kwargs.update(num_classes=num_classes, in_chans=in_chans)
    if cfg.drop_rate > 0:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path > 0:
        kwargs["drop_path_rate"] = cfg.drop_path
    try:
        if family == "convmixer":
            model = convmixer.create_convmixer(name, **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:  # a keyword this model's constructor lacks, e.g. ConvMixer's drop_path_rate
        for kw, field in (("drop_rate", "drop_rate"), ("drop_path_rate", "drop_path")):
            if f"'{kw}'" in str(e):
                value = getattr(cfg, field)
                raise ConfigError(f"model.{field}", value, f"{name} does not take it; must be 0") from None
        raise
    _check_built(model, cfg)
    if image_size is not None:
        _check_input_size(model, name, in_chans, image_size)
    return model


def _suggest(name: str) -> str:
    close = timm.list_models(f"*{name}*")[:5] or difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    return f"close names: {', '.join(close)}" if close else "see timm.list_models() for the known names"


def _overrides(cfg: ModelConfig, name: str, family: str | None) -> dict[str, Any]:
    keywords = _KEYWORDS.get(family, {})
    out: dict[str, Any] = {}
    for field in ("kernel_size", "dim", "depth", "patch_size"):
        value = getattr(cfg, field)
        if value is None:
            continue
        if field not in keywords:
            takers = ", ".join(FAMILIES[f] for f, kws in _KEYWORDS.items() if field in kws)
            raise ConfigError(f"model.{field}", value, f"{name} takes no {field} override; only {takers} models do")
        if family == "hornet" and field == "dim" and value % 2:
            raise ConfigError("model.dim", value,
                              "HorNet needs an even base width (its order-5 gnConv halves 8 x dim four times)")
        kw = keywords[field]
        out[kw] = (value, 2 * value, 4 * value, 8 * value) if kw == "dims" else value
    return out


def _check_built(model: nn.Module, cfg: ModelConfig) -> None:
    """The overrides took: every depthwise kernel has the asked size, the stem the asked stride."""
    if cfg.kernel_size is not None:
        sizes = sorted({conv.kernel_size for _, conv in find_depthwise_convs(model)})
        if sizes != [(cfg.kernel_size,) * 2]:
            raise ConfigError("model.kernel_size", cfg.kernel_size,
                              f"{cfg.name} built depthwise kernels of sizes {sizes}, not only this one")
    if cfg.patch_size is not None:
        stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        if not stem.kernel_size == stem.stride == (cfg.patch_size,) * 2:
            raise ConfigError("model.patch_size", cfg.patch_size, f"{cfg.name} has no patchify stem (its first conv "
                              f"has kernel {stem.kernel_size[0]} and stride {stem.stride[0]})")


def _check_input_size(model: nn.Module, name: str, in_chans: int, size: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size))
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[0]
        raise ConfigError("data.image_size", size, f"{name} cannot take {size}x{size} inputs ({first_line})") from None
    finally:
        model.train(was_training)
