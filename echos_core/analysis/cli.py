"""``echos analyze CHECKPOINT``: On/Off/other kernels of a trained model, per layer, with mosaics."""

from __future__ import annotations

import argparse
from pathlib import Path

from .names import CLUSTER_NORMALISATIONS

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="cluster the depthwise kernels of a checkpoint into On, Off and other",
        description="Rebuild the model of a checkpoint (file, checkpoint folder or run folder), cluster its "
                    "depthwise kernels with k-means, name the clusters On/Off/other by their centre-surround "
                    "index (CSI), fit a DoG and a dictionary of shapes to every kernel, and do the same for a "
                    "sample of its dense (groups=1) kernels as a control. Prints a per-layer table and writes "
                    "analysis.csv, analysis.json, kernels.csv and PNG mosaics per cluster to --out.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt, its folder, or a run folder (newest epoch)")
    p.add_argument("--out", "-o", metavar="DIR", help="output folder (default: <run folder>/analysis)")
    p.add_argument("--clusters", type=int, default=3, metavar="K", help="k-means clusters (default 3, as the paper)")
    p.add_argument("--normalise", "--normalize", default="l2", choices=CLUSTER_NORMALISATIONS,
                   help="per-kernel normalisation before k-means (default l2)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="cluster CSI above T is On, below -T Off, else other (default max(0.2, 1.5/k), above chance)")
    p.add_argument("--unique-names", action="store_true",
                   help="at most one On and one Off cluster; weaker duplicates become 'other'")
    p.add_argument("--sign-symmetric", action="store_true", help="fit k-means on the kernels and their negatives")
    p.add_argument("--per-layer", action="store_true", help="cluster each layer on its own (default: per kernel size)")
    p.add_argument("--dense-per-layer", type=int, default=256, metavar="N",
                   help="dense kernels sampled per layer for the control (default 256)")
    p.add_argument("--no-mosaics", action="store_true", help="skip the PNG mosaics")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and of the samples (default 0)")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ..checkpoint import model_from_checkpoint
    from ..config import ConfigError
    from ..validation import check_writable
    from .summary import analyse_model, format_table

    if args.clusters < 1:
        raise ConfigError("--clusters", args.clusters, "must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise ConfigError("--threshold", args.threshold, "must be in [0, 1)")
    if args.dense_per_layer < 1:
        raise ConfigError("--dense-per-layer", args.dense_per_layer, "must be >= 1")
    if args.seed < 0:
        raise ConfigError("--seed", args.seed, "must be >= 0")
    if not Path(args.checkpoint).exists():
        raise ConfigError("CHECKPOINT", args.checkpoint, "does not exist")

    if args.out:
        check_writable("--out", args.out)
    model, cfg, info = model_from_checkpoint(args.checkpoint)
    analysis = analyse_model(model, dense_per_layer=args.dense_per_layer, seed=args.seed, n_clusters=args.clusters,
                             normalise=args.normalise, threshold=args.threshold, unique_names=args.unique_names,
                             sign_symmetric=args.sign_symmetric, per_layer=args.per_layer)
    analysis.source = {**info, "model": cfg.model.name, "data": cfg.data.name, "init": cfg.init.scheme,
                       "seed": cfg.seed}
    if not analysis.kernels.get("depthwise"):
        raise ConfigError(f"checkpoint={info['path']!r}: model {cfg.model.name} has no square, odd depthwise kernels "
                         ">= 3x3 to analyse")
    out = Path(args.out) if args.out else Path(info["run_dir"]) / "analysis"
    print(f"{cfg.model.name} on {cfg.data.name}, init {cfg.init.scheme}, epoch {info['epoch']} ({info['path']})")
    print(format_table(analysis))
    paths = analysis.write(out, mosaics=not args.no_mosaics)
    print(f"wrote {len(paths)} files to {out}")
    return 0
