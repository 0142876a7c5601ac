"""The ``echos`` command line (also ``python -m echos_core``).

Subcommands: ``train`` (one run from a YAML config and ``key=value`` overrides) and ``kernels``
(draw the kernels an init scheme makes).  Other packages add theirs: every module named in
:data:`_COMMAND_MODULES` exposes ``register(subparsers)``, adds a parser and sets its ``func``
default to ``func(args) -> int``.  Heavy imports (Ray, MLflow) stay inside those functions.

A configuration error is one line on stderr, ``echos: error: <field>=<value>: <rule>``, and exit
status 2, before any compute; a diverged run is one line and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .config import ConfigError, InitConfig, apply_overrides, config_from_dict, config_to_dict, describe, load_config
from .validation import check_writable

__all__ = ["main", "build_parser"]

# Modules that add subcommands through ``register(subparsers)``.
_COMMAND_MODULES: list[str] = ["echos_core.analysis.cli", "echos_core.sweep.cli", "echos_core.report.cli",
                                "echos_core.ui"]


# --------------------------------------------------------------------------- echos train


def _register_train(sub) -> None:
    p = sub.add_parser("train", help="train one model from a config file",
                       description="Train one model. Settings come from --config, then key=value overrides "
                                   "(dotted keys, YAML values), e.g. `echos train --config configs/embedded_convmixer.yaml "
                                   "init.scheme=kaiming train.epochs=3`. --help-config lists every key.")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/); optional with --resume")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. init.on_ratio=0.25")
    p.add_argument("--resume", metavar="PATH", help="checkpoint file, checkpoint folder or run folder to continue")
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: output_dir/run_name)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.help_config:
        print(describe())
        return 0
    if args.config is None and args.resume is None:
        raise ConfigError("--config", None, "is required (or --resume a checkpoint, which carries its config)")
    if args.config is None:
        from .trainer import load_checkpoint

        cfg = config_from_dict(apply_overrides(load_checkpoint(args.resume)["config"], args.overrides))
    else:
        cfg = load_config(args.config, args.overrides)  # validated: a bad value stops here, before torch loads
    check_writable("--run-dir" if args.run_dir else "output_dir", args.run_dir or cfg.output_dir)
    if cfg.mlflow.tracking_uri:
        from .sweep.preflight import check_tracking

        check_tracking(cfg.mlflow.tracking_uri, "mlflow.tracking_uri")
    from .data import count_images
    from .data.transforms import uses_mixup
    from .trainer import check_batch_size, train

    # the data's counts and the batch rules, before any MLflow run exists (the trainer applies them again)
    check_batch_size(cfg.train.batch_size, count_images(cfg)[0], uses_mixup(cfg.data.augment))
    _log_to_stdout()

    run_kw = dict(run_dir=args.run_dir, resume_from=args.resume, progress=True)
    if cfg.mlflow.enabled:
        result = _train_with_mlflow(cfg, run_kw)
    else:
        result = train(cfg, **run_kw)
    best = max(result.history, key=lambda h: h["val_top1"]) if result.history else None
    if best is not None:
        print(f"done: best top-1 {result.best_top1:.2f}% (epoch {best['epoch']}), "
              f"final top-1 {result.final['val_top1']:.2f}%, run folder {result.run_dir}")
    return 0


def _train_with_mlflow(cfg, run_kw: dict):
    """Train with the run logged to MLflow (``mlflow.tracking_uri``, else the default store), as a sweep's trial is."""
    try:
        from .tracking import MlflowRun, environment_tags, resolve_tracking_uri
    except ImportError as e:
        raise ConfigError("mlflow.enabled", True, f"MLflow logging is unavailable ({e}); "
                                                  "set mlflow.enabled=false") from None
    from .runinfo import environment
    from .trainer import train

    tags = environment_tags(environment())  # as sweeps tag trials
    name = cfg.run_name or cfg.default_run_name()
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    with MlflowRun(uri, cfg.mlflow.experiment, name, config_to_dict(cfg), tags=tags) as run:
        result = train(cfg, callback=lambda metrics, _ckpt: run.log_epoch(metrics), **run_kw)
        for file in ("config.yaml", "init_report.json", "environment.json", "metrics.jsonl"):
            run.log_artifact(result.run_dir / file)
        if (result.run_dir / "kernels").is_dir():
            run.client.log_artifacts(run.run_id, str(result.run_dir / "kernels"), "kernels")
    print(f"MLflow: run {run.run_id} in experiment {cfg.mlflow.experiment!r} of {uri} (echos ui to look at it)")
    return result


def _log_to_stdout() -> None:
    """Trainer log lines to stdout, through tqdm.write so they never tear the progress bar."""
    from tqdm.auto import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stdout)

    logger = logging.getLogger("echos")
    if not any(type(h).__name__ == "TqdmHandler" for h in logger.handlers):
        logger.addHandler(TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


# --------------------------------------------------------------------------- echos kernels


def _register_kernels(sub) -> None:
    d = InitConfig()
    p = sub.add_parser("kernels", help="draw the depthwise kernels an init scheme makes",
                       description="Initialise a throwaway depthwise Conv2d(N, N, K, groups=N) exactly as training "
                                   "would (same code path), print On/Off counts and norms, and draw the kernels.")
    p.add_argument("--kernel-size", "-k", type=int, required=True, metavar="K", help="odd kernel size, 3 to 13")
    p.add_argument("--gamma-low", type=float, default=d.gamma_low, metavar="A", help=f"(default {d.gamma_low})")
    p.add_argument("--gamma-high", type=float, default=d.gamma_high, metavar="B", help=f"(default {d.gamma_high})")
    p.add_argument("--on-ratio", type=float, default=d.on_ratio, metavar="R", help=f"(default {d.on_ratio})")
    p.add_argument("--n", type=int, default=64, metavar="N", help="number of kernels, >= 2 (default 64)")
    p.add_argument("--scheme", default=d.scheme, help=f"init scheme (default {d.scheme})")
    p.add_argument("--scale", default=d.scale, help=f"unit, kaiming or match (default {d.scale})")
    p.add_argument("--normalisation", default=d.normalisation, help=f"lobe or oocs (default {d.normalisation})")
    p.add_argument("--fraction", type=float, default=d.fraction, help=f"share of kernels replaced (default {d.fraction})")
    p.add_argument("--noise", type=float, default=d.noise, help=f"relative noise std (default {d.noise})")
    p.add_argument("--length-scale", type=float, default=d.length_scale,
                   help=f"random-field length scale in pixels (default {d.length_scale})")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", "-o", required=True, metavar="FILE.png", help="where to write the mosaic")
    p.set_defaults(func=_cmd_kernels)


def _cmd_kernels(args: argparse.Namespace) -> int:
    import torch
    from torch import nn

    from .inits import apply_init
    from .plots import kernel_mosaic

    k, n = args.kernel_size, args.n
    if k < 3 or k > 13 or k % 2 == 0:
        raise ConfigError("--kernel-size", k, "must be odd, >= 3 and <= 13")
    if n < 2:
        raise ConfigError("--n", n, "must be >= 2 (a depthwise conv needs more than one channel)")
    if args.seed < 0:
        raise ConfigError("--seed", args.seed, "must be >= 0")
    check_writable("--out", args.out, what="file")
    init = InitConfig(scheme=args.scheme, gamma_low=args.gamma_low, gamma_high=args.gamma_high,
                      on_ratio=args.on_ratio, scale=args.scale, fraction=args.fraction, noise=args.noise,
                      normalisation=args.normalisation, length_scale=args.length_scale)
    init.validate()

    torch.manual_seed(args.seed)  # the base init (PyTorch's), which "match" and fraction < 1 see
    conv = nn.Conv2d(n, n, k, groups=n, bias=False)
    report = apply_init(nn.ModuleDict({"depthwise": conv}), init, args.seed)  # named, for error messages
    w = conv.weight.detach()[:, 0]
    norms = w.flatten(1).norm(dim=1)
    layer = report.layers[0]

    print(report.summary())
    if args.scheme == "dog":
        print(f"On-centre {layer.on}, Off-centre {layer.off}, unchanged {layer.kernels - layer.changed}")
    print(f"L2 norm per kernel: mean {norms.mean():.4f}, min {norms.min():.4f}, max {norms.max():.4f} "
          f"(rms before {layer.norm_before:.4f}, after {layer.norm_after:.4f})")
    centre = w[:, k // 2, k // 2]
    labels = [f"{'On' if c > 0 else 'Off'} {v:.2f}" if args.scheme == "dog" else f"{v:.2f}"
              for c, v in zip(centre.tolist(), norms.tolist())]
    title = (f"{args.scheme} k={k} scale={args.scale} seed={args.seed}"
             + (f" gamma=[{args.gamma_low:g}, {args.gamma_high:g}] on_ratio={args.on_ratio:g}" if args.scheme == "dog" else ""))
    path = kernel_mosaic(w, args.out, title=title, labels=labels)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echos", description="Difference-of-Gaussians init of depthwise "
                                     "convolutions: train, sweep and analyse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_train(sub)
    _register_kernels(sub)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# Named I/O errors a user causes with a path (a missing file, a folder given for a file, no permission).
USER_IO_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except BrokenPipeError:  # the reader went away (`echos train --help-config | head`): stop quietly
        _silence_stdout()
        return 0
    except (ConfigError, *USER_IO_ERRORS) as e:  # bad input: one line, exit 2; anything else keeps its traceback
        print(f"{parser.prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        trainer = sys.modules.get("echos_core.trainer")  # not imported: nothing was trained, nothing diverged
        if trainer is None or not isinstance(e, trainer.TrainingDiverged):
            raise
        print(f"{parser.prog}: error: training diverged: {_one_line(e)}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
