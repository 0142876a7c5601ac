"""echos: difference-of-Gaussians initialisation of depthwise convolutions."""

from .dog import dog_kernel, dog_kernels  # noqa: E402
