"""Kernel analysis: are trained depthwise kernels On-centre, Off-centre, or something else?

* :mod:`.kernels`: extraction (depthwise and dense), normalisation, the centre-surround index,
  the least-squares DoG fit, k-means with clusters named by their CSI, and the per-epoch metric
  :func:`epoch_kernel_metrics` for the trainer's ``metric_hooks``;
* :mod:`.shapes`: a dictionary of shapes (DoG, Gaussian, first and second Gaussian derivatives,
  saddles, step edges) fitted to every kernel, to say what the "other" kernels are;
* :mod:`.summary`: a whole model or checkpoint analysed per layer, written to CSV, JSON and mosaics;
* :mod:`.cli`: ``echos analyze CHECKPOINT``.
"""

from .kernels import (LABELS, CLUSTER_NORMALISATIONS, Clustering, DogFit, LayerKernels, centre_surround_index,
                      cluster_kernels, dense_layers, depthwise_layers, epoch_kernel_metrics, fit_dog,
                      normalise_kernels)
from .shapes import FAMILIES, ShapeFit, fit_shapes, shape_templates
from ..checkpoint import model_from_checkpoint
from .summary import Analysis, LayerSummary, analyse_layers, analyse_model, format_table

__all__ = [
    "LABELS", "CLUSTER_NORMALISATIONS", "FAMILIES",
    "LayerKernels", "depthwise_layers", "dense_layers", "normalise_kernels",
    "centre_surround_index", "DogFit", "fit_dog", "Clustering", "cluster_kernels", "epoch_kernel_metrics",
    "ShapeFit", "shape_templates", "fit_shapes",
    "Analysis", "LayerSummary", "analyse_layers", "analyse_model", "format_table", "model_from_checkpoint",
]
