"""echos: difference-of-Gaussians initialisation of depthwise convolutions."""
