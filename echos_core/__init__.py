"""echos: difference-of-Gaussians initialisation of depthwise convolutions.

``import echos_core`` loads only torch and the small core (config, DoG kernels, init registry);
``train``, ``create_model`` and ``build_data`` (which pull in timm and the data sets) are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import Config, load_config
from .dog import dog_kernel, dog_kernels
from .inits import INIT_SCHEMES, apply_init

__all__ = [
    "dog_kernel",
    "dog_kernels",
    "apply_init",
    "INIT_SCHEMES",
    "Config",
    "load_config",
    "train",
    "create_model",
    "build_data",
]

_LAZY = {"train": ".trainer", "create_model": ".models", "build_data": ".data"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
