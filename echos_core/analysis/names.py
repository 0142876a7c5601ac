"""The names of kernel classes and of kernel normalisations (no heavy imports: the CLI's choices)."""

LABELS = ("on", "off", "other")  # what a cluster of kernels is called
CLUSTER_NORMALISATIONS = ("l2", "zscore", "none")  # per-kernel normalisation before clustering
