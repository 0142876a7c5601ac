"""A whole model (or checkpoint) analysed: per-layer On/Off/other tables, files and mosaics.

:func:`analyse_model` runs every piece of :mod:`.kernels` and :mod:`.shapes` on the depthwise
kernels of a model and on a seeded sample of its dense (``groups == 1``) kernels, the paper's
control.  Kernels of one kind and one size are clustered together (pooled over layers, as one
k-means per model); ``per_layer=True`` clusters each layer on its own.  :meth:`Analysis.write`
puts the results in a folder:

* ``analysis.csv``: one row per layer (fractions, mean CSI, mean DoG R^2, shape families);
* ``analysis.json``: the same rows, the options used, and per cluster group the cluster names,
  CSIs, sizes and centroids, and what shape families the 'other' kernels are;
* ``kernels.csv``: one row per analysed kernel (label, CSI, DoG gamma/amplitude/R^2, shape family with
  its R^2, size (sigma in pixels, gamma for 'dog') and orientation in degrees);
* ``<kind>_k<k>_<label>.png``: a mosaic per cluster name, ``<kind>_k<k>_centroids.png`` the centroids.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .kernels import (LABELS, LayerKernels, centre_surround_index, check_normalisation, cluster_kernels, dense_layers,
                      depthwise_layers, fit_dog)
from .shapes import FAMILIES, fit_shapes

__all__ = ["LayerSummary", "Analysis", "analyse_layers", "analyse_model", "format_table"]


@dataclass
class LayerSummary:
    kind: str  # depthwise | dense
    layer: str
    kernel_size: int
    kernels: int  # analysed
    total: int  # in the layer
    on: float
    off: float
    other: float
    csi_mean: float
    csi_abs_mean: float
    dog_r2_mean: float
    dog_gamma_median: float  # over the layer's kernels labelled 'on' or 'off' (NaN if none)
    shapes: dict[str, float] = field(default_factory=dict)  # share of each shape family (and 'none')


@dataclass
class Analysis:
    """Everything :func:`analyse_model` found; ``kernels`` holds per-kernel arrays per kind."""

    layers: list[LayerSummary]
    groups: list[dict[str, Any]]
    kernels: dict[str, dict[str, np.ndarray]]
    options: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # kernels per kind, for mosaics

    def overall(self, kind: str = "depthwise") -> dict[str, float]:
        """Fractions and means over all kernels of ``kind`` (kernel-weighted, not layer-weighted)."""
        k = self.kernels.get(kind)
        if not k or len(k["label"]) == 0:
            return {}
        out = {name: float(np.mean(k["label"] == name)) for name in LABELS}
        out.update(csi_mean=float(k["csi"].mean()), csi_abs_mean=float(np.abs(k["csi"]).mean()),
                   dog_r2_mean=float(k["dog_r2"].mean()), kernels=int(len(k["label"])))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "options": self.options,
                "overall": {kind: self.overall(kind) for kind in self.kernels},
                "layers": [asdict(s) for s in self.layers], "groups": self.groups}

    def write(self, out_dir: str | Path, mosaics: bool = True, max_kernels: int = 64) -> list[Path]:
        """Write the files of the module docstring to ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "analysis.json", out / "analysis.csv", out / "kernels.csv"]
        paths[0].write_text(json.dumps(_jsonable(self.to_dict()), indent=2) + "\n")
        _write_layers_csv(self.layers, paths[1])
        _write_kernels_csv(self.kernels, paths[2])
        if mosaics:
            paths += _write_mosaics(self, out, max_kernels)
        return paths


# --------------------------------------------------------------------------- analysis


def analyse_layers(layers: list[LayerKernels], *, n_clusters: int = 3, normalise: str = "l2",
                   sign_symmetric: bool = False, threshold: float | None = None, unique_names: bool = False,
                   per_layer: bool = False, seed: int = 0, n_init: int = 4, min_shape_r2: float = 0.5
                   ) -> tuple[list[LayerSummary], list[dict], dict[str, np.ndarray], list[np.ndarray]]:
    """Cluster, CSI, DoG fit and shape fit for layers of one kind.

    Returns per-layer summaries, per-group cluster records, per-kernel arrays (concatenated in
    layer order) and the kernels themselves (one array per layer, for mosaics).
    """
    check_normalisation(normalise)  # before any fit
    layers = [layer for layer in layers if len(layer)]
    cluster_args = dict(n_clusters=n_clusters, normalise=normalise, sign_symmetric=sign_symmetric,
                        threshold=threshold, unique_names=unique_names, seed=seed, n_init=n_init)
    per: dict[int, dict[str, np.ndarray]] = {}
    records = []
    for g, members in enumerate(_layer_groups(layers, per_layer)):
        record, arrays = _analyse_group(g, [layers[i] for i in members], cluster_args, min_shape_r2)
        records.append(record)
        per.update(zip(members, arrays))
    summaries = [_layer_summary(layer, per[i]) for i, layer in enumerate(layers)]
    keys = list(per[0]) if per else []
    flat = {key: np.concatenate([per[i][key] for i in range(len(layers))]) for key in keys}
    return summaries, records, flat, [layer.kernels for layer in layers]


def _layer_groups(layers: list[LayerKernels], per_layer: bool) -> list[list[int]]:
    """Indices of the layers clustered together: each layer alone, or all layers of one kernel size."""
    if per_layer:
        return [[i] for i in range(len(layers))]
    by_k: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        by_k.setdefault(layer.kernel_size, []).append(i)
    return [by_k[k] for k in sorted(by_k)]


def _analyse_group(g: int, members: list[LayerKernels], cluster_args: dict, min_shape_r2: float
                   ) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """One group's cluster record and, per member layer, its per-kernel arrays."""
    w = np.concatenate([layer.kernels for layer in members]).astype(np.float64)
    fit = fit_dog(w)
    csi = centre_surround_index(w, fit=fit)
    cl = cluster_kernels(w, csi=csi, **cluster_args)
    shapes = fit_shapes(w, min_r2=min_shape_r2)
    other = cl.labels == "other"
    k = members[0].kernel_size
    record = {
        "kind": members[0].kind, "kernel_size": k, "layers": [layer.name for layer in members], "kernels": len(w),
        "threshold": cl.threshold, "names": cl.names, "cluster_csi": cl.cluster_csi.tolist(),
        "sizes": cl.sizes.tolist(),
        "centroids": np.round(cl.centroids, 5).tolist(),
        "other_shapes": shapes.fractions(other) if other.any() else {},
    }
    arrays, start = [], 0
    for layer in members:
        n = len(layer)
        sl = slice(start, start + n)
        start += n
        arrays.append({
            "layer": np.full(n, layer.name, dtype=object), "index": layer.index,
            "kernel_size": np.full(n, k), "group": np.full(n, g), "cluster": cl.cluster[sl],
            "label": cl.labels[sl], "csi": csi[sl], "csi_fixed": centre_surround_index(layer.kernels, "fixed"),
            "dog_gamma": fit.gamma[sl], "dog_amplitude": fit.amplitude[sl], "dog_r2": fit.r2[sl],
            "shape": shapes.family[sl], "shape_r2": shapes.r2[sl],
            "shape_size": shapes.params[sl, 0], "shape_theta_deg": np.degrees(shapes.params[sl, 1]),
        })
    return record, arrays


def _layer_summary(layer: LayerKernels, p: dict[str, np.ndarray]) -> LayerSummary:
    cs = p["label"] != "other"
    fam = p["shape"]
    return LayerSummary(
        kind=layer.kind, layer=layer.name, kernel_size=layer.kernel_size, kernels=len(layer), total=layer.total,
        **{name: float(np.mean(p["label"] == name)) for name in LABELS},
        csi_mean=float(p["csi"].mean()), csi_abs_mean=float(np.abs(p["csi"]).mean()),
        dog_r2_mean=float(p["dog_r2"].mean()),
        dog_gamma_median=float(np.median(p["dog_gamma"][cs])) if cs.any() else float("nan"),
        shapes={f: float(np.mean(fam == f)) for f in (*FAMILIES, "none")},
    )


def analyse_model(model: nn.Module, *, dense: bool = True, dense_per_layer: int = 256, seed: int = 0,
                  **options: Any) -> Analysis:
    """Analyse every depthwise kernel of ``model`` and (``dense=True``) a seeded sample of at most
    ``dense_per_layer`` 2-D kernels of every dense convolution.  ``options`` go to :func:`analyse_layers`."""
    kinds = {"depthwise": depthwise_layers(model)}
    if dense:
        kinds["dense"] = dense_layers(model, dense_per_layer, seed)
    layers, groups, kernels = [], [], {}
    weights = {}
    for kind, lk in kinds.items():
        s, g, k, w = analyse_layers(lk, seed=seed, **options)
        layers += s
        groups += g
        if k:
            kernels[kind] = k
            weights[kind] = np.concatenate(w)
    opts = dict(n_clusters=3, normalise="l2", sign_symmetric=False, threshold=None, unique_names=False,
                per_layer=False, n_init=4, min_shape_r2=0.5)
    opts.update(options, seed=seed, dense=dense, dense_per_layer=dense_per_layer)
    return Analysis(layers, groups, kernels, opts, weights=weights)


# --------------------------------------------------------------------------- checkpoints


# --------------------------------------------------------------------------- output


def format_table(analysis: Analysis) -> str:
    """A plain-text table: one line per layer, then one line per kind over all its kernels."""
    head = (f"{'kind':<9} {'layer':<34} {'k':>2} {'n':>6} {'on':>6} {'off':>6} {'other':>6} "
            f"{'csi':>7} {'|csi|':>6} {'dogR2':>6}")
    lines = [head, "-" * len(head)]

    def row(kind: str, layer: str, k: Any, n: int, d: dict) -> str:
        return (f"{kind:<9} {layer[-34:]:<34} {k!s:>2} {n:>6d} {d['on']:>6.3f} {d['off']:>6.3f} {d['other']:>6.3f} "
                f"{d['csi_mean']:>+7.3f} {d['csi_abs_mean']:>6.3f} {d['dog_r2_mean']:>6.3f}")

    for s in analysis.layers:
        lines.append(row(s.kind, s.layer, s.kernel_size, s.kernels, asdict(s)))
    lines.append("-" * len(head))
    for kind in ("depthwise", "dense"):
        o = analysis.overall(kind)
        if o:
            lines.append(row(kind, "(all layers)", "", o["kernels"], o))
        elif kind == "dense" and analysis.options.get("dense", True):
            lines.append(f"{kind:<9} (no square, odd, >= 3x3 dense convolutions)")
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_layers_csv(layers: list[LayerSummary], path: Path) -> None:
    cols = ["kind", "layer", "kernel_size", "kernels", "total", "on", "off", "other", "csi_mean", "csi_abs_mean",
            "dog_r2_mean", "dog_gamma_median"] + [f"shape_{f}" for f in (*FAMILIES, "none")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in layers:
            d = asdict(s)
            vals = [d[c] for c in cols[:12]] + [s.shapes.get(f, 0.0) for f in (*FAMILIES, "none")]
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in vals])


def _write_kernels_csv(kernels: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    cols = ["kind", "layer", "index", "kernel_size", "group", "cluster", "label", "csi", "csi_fixed", "dog_gamma",
            "dog_amplitude", "dog_r2", "shape", "shape_r2", "shape_size", "shape_theta_deg"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for kind, k in kernels.items():
            for i in range(len(k["label"])):
                vals = [kind] + [k[c][i] for c in cols[1:]]
                w.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in vals])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "layer"


def _write_mosaics(analysis: Analysis, out: Path, max_kernels: int) -> list[Path]:
    from ..plots import kernel_mosaic as mosaic

    seed = int(analysis.options.get("seed", 0))
    paths = []
    for kind, k in analysis.kernels.items():
        weights = analysis.weights[kind]
        for g in np.unique(k["group"]):
            rec = analysis.groups[[i for i, r in enumerate(analysis.groups) if r["kind"] == kind][g]]
            in_g = k["group"] == g
            tag = f"{kind}_k{rec['kernel_size']}" if not analysis.options.get("per_layer") else \
                f"{kind}_{_safe(rec['layers'][0])}"
            cent = torch.tensor(rec["centroids"], dtype=torch.float32)
            names = [f"{n} {c:+.2f}" if c == c else n for n, c in zip(rec["names"], rec["cluster_csi"])]
            paths.append(mosaic(cent, out / f"{tag}_centroids.png", title=f"{tag} centroids", labels=names,
                                ncols=len(names)))
            for label in LABELS:
                idx = np.flatnonzero(in_g & (k["label"] == label))
                if len(idx) == 0:
                    continue
                n_all = len(idx)
                if n_all > max_kernels:
                    idx = np.random.default_rng(seed).choice(idx, size=max_kernels, replace=False)
                idx = idx[np.argsort(-k["csi"][idx], kind="stable")]
                title = f"{tag}: '{label}' ({n_all} kernels{f', {len(idx)} drawn' if n_all > len(idx) else ''})"
                paths.append(mosaic(torch.from_numpy(weights[idx].astype(np.float32)), out / f"{tag}_{label}.png",
                                    title=title, labels=[f"{c:+.2f}" for c in k["csi"][idx]], max_kernels=max_kernels))
    return paths
