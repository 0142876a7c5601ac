"""echos: difference-of-Gaussians initialisation of depthwise convolutions.

``import echos_core`` loads only the configuration (no torch): every other public name
(``dog_kernel``, ``apply_init``, ``train``, ``create_model``, ``build_data``, ...) is imported
on first use (``lazy_loader``), so the command line starts in a fraction of a second and
torch, timm, Ray and MLflow load only where they are used.
"""

import lazy_loader

from . import inits as _inits  # registers the built-in init schemes (torch itself loads on first use)
from .config import Config, load_config

__getattr__, __dir__, _ = lazy_loader.attach(__name__, submod_attrs={
    "dog": ["dog_kernel", "dog_kernels"],
    "inits": ["apply_init"],
    "registry": ["INIT_SCHEMES"],
    "trainer": ["train"],
    "models": ["create_model"],
    "data": ["build_data"],
})

__all__ = ["dog_kernel", "dog_kernels", "apply_init", "INIT_SCHEMES", "Config", "load_config", "train",
           "create_model", "build_data"]
