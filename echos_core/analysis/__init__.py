"""Kernel analysis: are trained depthwise kernels On-centre, Off-centre, or something else?

* :mod:`.kernels`: extraction (depthwise and dense), normalisation, the centre-surround index,
  the least-squares DoG fit, k-means with clusters named by their CSI, and the per-epoch metric
  :func:`epoch_kernel_metrics` for the trainer's ``metric_hooks``;
* :mod:`.shapes`: a dictionary of shapes (DoG, Gaussian, first and second Gaussian derivatives,
  saddles, step edges) fitted to every kernel, to say what the "other" kernels are;
* :mod:`.summary`: a whole model or checkpoint analysed per layer, written to CSV, JSON and mosaics;
* :mod:`.cli`: ``echos analyze CHECKPOINT``.
"""

import lazy_loader

from .names import CLUSTER_NORMALISATIONS, LABELS  # torch-free: the command line's choices

__getattr__, __dir__, _ = lazy_loader.attach(__name__, submod_attrs={
    "kernels": ["Clustering", "DogFit", "LayerKernels", "centre_surround_index", "cluster_kernels", "dense_layers",
                "depthwise_layers", "epoch_kernel_metrics", "fit_dog", "normalise_kernels"],
    "shapes": ["FAMILIES", "ShapeFit", "fit_shapes", "shape_templates"],
    "summary": ["Analysis", "LayerSummary", "analyse_layers", "analyse_model", "format_table"],
})


def __getattr__(name: str, _lazy=__getattr__):  # noqa: F811 - model_from_checkpoint lives in echos_core.checkpoint
    if name == "model_from_checkpoint":
        from ..checkpoint import model_from_checkpoint

        return model_from_checkpoint
    return _lazy(name)

__all__ = [
    "LABELS", "CLUSTER_NORMALISATIONS", "FAMILIES",
    "LayerKernels", "depthwise_layers", "dense_layers", "normalise_kernels",
    "centre_surround_index", "DogFit", "fit_dog", "Clustering", "cluster_kernels", "epoch_kernel_metrics",
    "ShapeFit", "shape_templates", "fit_shapes",
    "Analysis", "LayerSummary", "analyse_layers", "analyse_model", "format_table", "model_from_checkpoint",
]
