"""The training loop: one function, :func:`train`, from a validated :class:`Config` to a run folder.

Order of work (every error is raised before the first optimiser step):

1. read the checkpoint to resume from (if any); the config arrives validated;
2. :func:`echos_core.build.build_run`: seed, data, model, init (the report goes to ``init_report.json``);
3. check the batch size against the data;
4. train: AdamW (no weight decay on norms, biases, 1-d params), per-step linear warm-up then
   cosine to ``min_lr``, label smoothing (soft-target cross-entropy under mixup/CutMix),
   gradient clipping, bf16 autocast on CUDA, channels-last memory when the model has depthwise
   convolutions (:func:`use_channels_last`);
5. after every epoch: evaluate on the whole validation set, run the metric hooks, append a line
   to ``metrics.jsonl``, write a checkpoint when due, then call ``callback(metrics, checkpoint_dir)``.

The trainer knows nothing of Ray or MLflow; they are thin layers on the callback.  Data parallelism
enters as a :class:`echos_core.parallel.DataParallel` (``parallel=``): the init checked identical on
every rank, the model wrapped in DDP, each rank training on its part of every global batch of
``train.batch_size``, validation sums added over ranks, and only rank 0 writing the run folder.

Run folder::

    run_dir/config.yaml          resolved config
    run_dir/environment.json     versions, machine, git revision (echos_core.runinfo)
    run_dir/init_report.json     what the init changed, per layer
    run_dir/kernels/init_<layer>.png, final_<layer>.png   mosaics of the first and last depthwise layer
                                 (final: after the latest epoch; with train.kernel_metrics)
    run_dir/metrics.jsonl        one JSON object per epoch
    run_dir/checkpoints/epoch_0003/checkpoint.pt

A checkpoint holds model, optimiser, scheduler, epoch, history, every RNG state and the config,
so resuming after epoch ``e`` reproduces the epochs ``e+1 ..`` of an uninterrupted run.
Data order does not depend on RNG state at all: it is ``data.loader("train", seed=cfg.seed, epoch=e)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from .build import build_run
from .checkpoint import (CHECKPOINT_FORMAT, epoch_dirs, load_checkpoint, rng_state, run_dir_of, save_checkpoint,
                         set_rng_state)
from .config import Config, ConfigError, config_to_dict, flatten
from .parallel import DataParallel
from .runinfo import environment

__all__ = [
    "TrainingDiverged",
    "TrainResult",
    "train",
    "lr_factor",
    "check_batch_size",
    "torch_threads",
]

log = logging.getLogger("echos")

# Sections that define *what* is trained; a checkpoint only resumes a config that agrees on them.
_RESUME_MUST_MATCH = ("model", "data", "init", "seed")


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite.  The message names epoch, step and loss value."""


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    final: dict = field(default_factory=dict)  # the last epoch's metrics
    best_top1: float = float("nan")  # best val_top1 over epochs (percent)
    init_report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then cosine
    from 1 to ``min_ratio = min_lr / lr``, reaching it at ``step == total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_resumable(cfg: Config, ckpt: dict) -> None:
    old = flatten({k: ckpt["config"].get(k) for k in _RESUME_MUST_MATCH})
    new = flatten({k: config_to_dict(cfg)[k] for k in _RESUME_MUST_MATCH})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ConfigError(f"{key}={new.get(key)!r}: the checkpoint {ckpt['path']} was trained with "
                              f"{old.get(key)!r}; resume only with the same {', '.join(_RESUME_MUST_MATCH)}")


# --------------------------------------------------------------------------- devices


def _device(cfg: Config) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device", want, "CUDA is not available on this machine")
        idx = int(want[5:]) if ":" in want else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError("train.device", want, f"only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(want)


def use_channels_last(setting: str, model: nn.Module) -> bool:
    """``train.channels_last``: "on", "off", or "auto" = on when ``model`` has depthwise convolutions.

    Measured for "auto" (echos' onoff_ratio model, ConvMixer-64/4 k7 on 32x32, batch 64, AdamW
    step, one CPU thread, median of 7 interleaved rounds, 2-core shared machine, torch 2.x):
    channels_last takes 0.37x the time of contiguous (0.108 s vs 0.271 s per step); the issue
    measured 3.7x for the depthwise 7x7 conv alone.  On CUDA cuDNN's depthwise and NHWC kernels
    are the fast ones too, so the rule is the same on every device.  Models without depthwise
    convolutions keep the default layout (no measurement says NHWC helps dense convs on CPU).
    """
    if setting != "auto":
        return setting == "on"
    from .inits import find_depthwise_convs

    return bool(find_depthwise_convs(model))


def _to_python(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast, channels_last: bool,
             num_classes: int, all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Mean cross-entropy, top-1 and top-k (k = min(5, classes)) accuracy in percent on ``loader``.

    ``all_sum`` (data-parallel runs): adds the sums over the ranks, each of which saw its part of the set.
    """
    from timm.utils import accuracy

    model.eval()
    k = min(5, num_classes)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.float64)
    topk = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out = model(x)
        out = out.float()
        b = y.shape[0]
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum")
        a1, ak = accuracy(out, y, topk=(1, k))
        top1 += a1 * b
        topk += ak * b
        n += b
    sums = torch.stack([loss_sum, top1, topk, torch.tensor(float(n), device=device, dtype=torch.float64)])
    if all_sum is not None:
        sums = all_sum(sums)
    loss_sum, top1, topk, n = sums.tolist()
    n = max(n, 1)
    # Accuracies are counts over n in percent: 6 decimals hold them exactly (no 23.299999999999997 in tables).
    return {"val_loss": loss_sum / n, "val_top1": round(top1 / n, 6), "val_top5": round(topk / n, 6)}


# --------------------------------------------------------------------------- the loop


def train(cfg: Config, run_dir: str | Path | None = None, *,
          callback: Callable[[dict, Path | None], None] | None = None,
          resume_from: str | Path | None = None,
          metric_hooks: Sequence[Callable[[nn.Module], dict]] = (),
          progress: bool = False, parallel: DataParallel | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (default ``cfg.output_dir / (cfg.run_name or cfg.default_run_name())``).

    ``callback(metrics, checkpoint_dir)`` runs once per epoch after that epoch's checkpoint is written
    (``checkpoint_dir`` is None when none was due).  ``metric_hooks`` are called with the (uncompiled)
    model after each evaluation; their dicts are merged into the epoch's metrics.  ``resume_from`` is a
    checkpoint file, checkpoint folder or run folder; the run continues exactly where it stopped.
    ``parallel``: this process is one rank of a data-parallel run (see the module docstring); every
    rank calls ``train`` with the same config and ``callback`` runs on every rank (``checkpoint_dir``
    None except on rank 0).  Raises :class:`TrainingDiverged` on a non-finite loss.
    """
    with torch_threads(cfg.train.threads):
        return _train(cfg, run_dir, callback, resume_from, metric_hooks, progress, parallel)


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` (``train.threads``; None leaves them) for the block, then
    restored: ``train.threads`` is a run's setting, not the process's."""
    threads = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(cfg: Config, run_dir, callback, resume_from, metric_hooks, progress, parallel) -> TrainResult:

    # ---- 1. everything that can be wrong is checked before compute
    tc = cfg.train
    ckpt = load_checkpoint(resume_from) if resume_from is not None else None
    if ckpt is not None:
        _check_resumable(cfg, ckpt)
    device = _device(cfg)
    run_dir = _resolve_run_dir(cfg, run_dir, ckpt)

    built = build_run(cfg)
    data, model, report = built.data, built.model, built.init_report
    steps_per_epoch = _steps_per_epoch(tc, data, parallel)
    main = parallel is None or parallel.is_main  # the one process that writes files
    shard = parallel.shard if parallel is not None else (0, 1)
    total_steps = tc.epochs * steps_per_epoch

    log.info(report.summary() + _on_off(report))
    log.info(f"data: {data.description}")

    # ---- 2. set-up (in this order: a resumed run draws the same random numbers as a fresh one)
    step_ctx, history, start_epoch = _set_up(model, data.mixup_fn, tc, ckpt, device, parallel, steps_per_epoch)
    if main:
        _write_run_folder(run_dir, cfg, report.to_dict(), history, fresh=ckpt is None)
        log.info(f"run folder: {run_dir}")
    metric_hooks = _with_kernel_hooks(cfg, model, metric_hooks, run_dir, init_mosaics=ckpt is None and main)
    val_loader = data.loader("val", tc.batch_size, seed=cfg.seed, epoch=0, device=device,
                             num_workers=cfg.data.num_workers, shard=shard)
    if ckpt is not None:  # last, so that set-up above draws the same numbers in both cases
        set_rng_state(ckpt["rng"])
    bar = _progress_bar(progress, total_steps, (start_epoch - 1) * steps_per_epoch)

    # ---- 3. epochs
    try:
        for epoch in range(start_epoch, tc.epochs + 1):
            train_loader = data.loader("train", tc.batch_size, seed=cfg.seed, epoch=epoch, device=device,
                                       num_workers=cfg.data.num_workers, shard=shard)
            metrics = _epoch(step_ctx, epoch, train_loader, val_loader, data.num_classes, tc.batch_size, bar, parallel)
            _run_hooks(metric_hooks, model, metrics)
            history.append(metrics)
            ckpt_dir = _write_epoch(run_dir, cfg, step_ctx, history) if main else None
            if callback is not None:
                callback(dict(metrics), ckpt_dir)
    finally:
        if bar is not None:
            bar.close()

    if start_epoch > tc.epochs:
        log.warning(f"checkpoint is at epoch {start_epoch - 1} of train.epochs={tc.epochs}: nothing left to train")
    top1 = [h["val_top1"] for h in history]
    return TrainResult(run_dir=run_dir, history=history, final=history[-1] if history else {},
                       best_top1=max(top1) if top1 else float("nan"), init_report=report.to_dict())


# --------------------------------------------------------------------------- helpers of train()


def _set_up(model, mixup_fn, tc, ckpt, device, parallel, steps_per_epoch: int):
    """Model on its device and memory format, optimiser, scheduler, loss, the checkpoint's state restored,
    the data-parallel wrapper and torch.compile: ``(what a step needs, history, first epoch)``."""
    amp = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    channels_last = use_channels_last(tc.channels_last, model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    warmup_steps = int(round(tc.warmup_epochs * steps_per_epoch))
    optimizer, scheduler, criterion = _optimisation(model, tc, warmup_steps, tc.epochs * steps_per_epoch,
                                                    mixup_fn is not None)
    history, start_epoch = _restore(ckpt, model, optimizer, scheduler)
    runner = model
    if parallel is not None:
        parallel.check_identical(model, "the resumed model" if ckpt is not None else "the initial model")
        runner = parallel.wrap(model)
    runner = torch.compile(runner) if tc.compile else runner

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext()

    steps = _Steps(model=model, runner=runner, optimizer=optimizer, scheduler=scheduler, criterion=criterion,
                   device=device, channels_last=channels_last, autocast=autocast, mixup_fn=mixup_fn,
                   grad_clip=tc.grad_clip, steps_per_epoch=steps_per_epoch)
    return steps, history, start_epoch


def _epoch(c: "_Steps", epoch: int, train_loader, val_loader, num_classes: int, batch_size: int, bar,
           parallel) -> dict[str, Any]:
    """Train one epoch and evaluate: the epoch's metrics (kernel metrics come from the hooks)."""
    t0 = time.perf_counter()
    losses, train_time = _train_epoch(c, train_loader, epoch, bar)
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": _mean_loss(losses, parallel),
        **_evaluate(c.runner, c.model, val_loader, c, num_classes, parallel),
        "images_per_sec": len(losses) * batch_size / max(train_time, 1e-9),
        "lr": c.optimizer.param_groups[0]["lr"],
    }
    metrics["epoch_time_s"] = time.perf_counter() - t0
    return metrics


def _with_kernel_hooks(cfg: Config, model, metric_hooks, run_dir: Path, init_mosaics: bool) -> list:
    """The caller's metric hooks, plus the kernel metrics when ``train.kernel_metrics`` is on (and then the
    mosaics of the kernels at init, on a fresh run's writing rank)."""
    hooks = list(metric_hooks)
    if cfg.train.kernel_metrics:
        from .analysis import epoch_kernel_metrics

        if epoch_kernel_metrics not in hooks:  # a caller may already pass it
            hooks.append(epoch_kernel_metrics)
        if init_mosaics:
            write_kernel_mosaics(model, run_dir / "kernels", "init", run=cfg.run_name or cfg.default_run_name())
    return hooks


def check_batch_size(batch_size: int, n_train: int, mixup: bool) -> None:
    """The batch rules (the trainer's, and a sweep's preflight before Ray starts): a full batch must fit in
    the training set, and mixup/CutMix pair images, so their batches are even."""
    if batch_size > n_train:
        raise ConfigError("train.batch_size", batch_size, f"must be <= the number of training images ({n_train})")
    if mixup and batch_size % 2:
        raise ConfigError("train.batch_size", batch_size, "must be even when mixup/CutMix is on (images are paired)")


def _steps_per_epoch(tc, data, parallel=None) -> int:
    """Optimiser steps per epoch (full batches only); a batch size the data cannot fill is an error."""
    n_train = len(data.train)
    if parallel is not None:
        world = parallel.world_size
        if tc.batch_size % world or (data.mixup_fn is not None and tc.batch_size % (2 * world)):
            rule = "an even number of images" if data.mixup_fn is not None else "the same number of images"
            raise ConfigError("train.batch_size", tc.batch_size, f"must give each of the {world} data-parallel "
                              f"workers {rule} (the global batch is split over them)")
    check_batch_size(tc.batch_size, n_train, data.mixup_fn is not None)
    steps = n_train // tc.batch_size  # drop_last: every step sees a full batch
    return steps if tc.steps_per_epoch is None else min(steps, tc.steps_per_epoch)


def _optimisation(model: nn.Module, tc, warmup_steps: int, total_steps: int, mixup: bool):
    """AdamW (no decay on norms, biases, 1-d params), the warm-up + cosine schedule, the loss."""
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt="adamw", lr=tc.lr, weight_decay=tc.weight_decay,
                                    filter_bias_and_bn=True)
    min_ratio = tc.min_lr / tc.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, min_ratio))
    if mixup:
        criterion: nn.Module = SoftTargetCrossEntropy()  # mixup_fn smooths the targets itself
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    return optimizer, scheduler, criterion


@dataclass
class _Steps:
    """What one optimiser step needs."""

    model: nn.Module
    runner: nn.Module  # the model, compiled or not
    optimizer: Any
    scheduler: Any
    criterion: nn.Module
    device: torch.device
    channels_last: bool
    autocast: Callable
    mixup_fn: Any
    grad_clip: float | None
    steps_per_epoch: int


def _train_epoch(c: _Steps, loader, epoch: int, bar) -> tuple[list[torch.Tensor], float]:
    """One epoch of optimiser steps; returns the step losses and the training time in seconds."""
    check_every = 1 if c.device.type == "cpu" else 32  # a host sync per check: rarely on accelerators
    c.runner.train()
    losses: list[torch.Tensor] = []
    checked = 0
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= c.steps_per_epoch:
            break
        x = x.to(c.device, non_blocking=True)
        y = y.to(c.device, non_blocking=True)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if c.mixup_fn is not None:
            x, y = c.mixup_fn(x, y)
        with c.autocast():
            loss = c.criterion(c.runner(x), y)
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip is not None:
            nn.utils.clip_grad_norm_(c.model.parameters(), c.grad_clip)
        c.optimizer.step()
        c.scheduler.step()
        losses.append(loss.detach().float())
        if (step + 1) % check_every == 0 or step + 1 == c.steps_per_epoch:
            _check_finite(losses, checked, epoch, c.steps_per_epoch, c.optimizer)
            checked = len(losses)
        if bar is not None:
            bar.update(1)
            if (step + 1) % 10 == 0 or step + 1 == c.steps_per_epoch:
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1].item():.3f}", refresh=False)
    if c.device.type == "cuda":
        torch.cuda.synchronize(c.device)
    train_time = time.perf_counter() - t0
    _check_finite(losses, checked, epoch, c.steps_per_epoch, c.optimizer)
    return losses, train_time


def _restore(ckpt: dict | None, model: nn.Module, optimizer, scheduler) -> tuple[list[dict], int]:
    """(history, first epoch to train): a checkpoint's model, optimiser and schedule state, or a fresh start."""
    if ckpt is None:
        return [], 1
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    log.info(f"resumed from {ckpt['path']} after epoch {ckpt['epoch']}")
    return list(ckpt["history"]), int(ckpt["epoch"]) + 1


def _run_hooks(metric_hooks, model: nn.Module, metrics: dict) -> None:
    """Add each metric hook's values to the epoch's ``metrics`` (a hook may not replace the trainer's own)."""
    for hook in metric_hooks:
        for key, value in hook(model).items():
            if key in metrics:
                raise ValueError(f"metric hook {getattr(hook, '__name__', hook)!r} returned {key!r}, "
                                 "which the trainer already reports")
            metrics[key] = _to_python(value)


def _write_epoch(run_dir: Path, cfg: Config, c: "_Steps", history: list[dict]) -> Path | None:
    """The run folder's part of an epoch (the one writing process): its line of ``metrics.jsonl``, its
    checkpoint when due (returned), and the kernels as training left them (before the callback, which may
    end a trial)."""
    tc, metrics = cfg.train, history[-1]
    epoch = metrics["epoch"]
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    log.info(_epoch_line(metrics, tc.epochs))
    ckpt_dir = None
    if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs:
        ckpt_dir = _save_epoch(run_dir, cfg, epoch, c, history)
    if tc.kernel_metrics:
        write_kernel_mosaics(c.model, run_dir / "kernels", "final", caption=f"after epoch {epoch}/{tc.epochs}",
                             run=cfg.run_name or cfg.default_run_name())
    return ckpt_dir


def _mean_loss(losses: list[torch.Tensor], parallel: DataParallel | None) -> float:
    """The epoch's mean training loss (over every rank's parts of the batches)."""
    local = torch.stack(losses).mean().item()
    return local if parallel is None else parallel.mean(local)


def _evaluate(runner: nn.Module, model: nn.Module, val_loader, c: "_Steps", num_classes: int,
              parallel: DataParallel | None) -> dict:
    """:func:`evaluate`; data-parallel: the plain model with rank 0's buffers, sums over ranks."""
    if parallel is None:
        return evaluate(runner, val_loader, c.device, c.autocast, c.channels_last, num_classes)
    parallel.sync_buffers(model)
    return evaluate(model, val_loader, c.device, c.autocast, c.channels_last, num_classes, parallel.all_sum)


def _save_epoch(run_dir: Path, cfg: Config, epoch: int, c: _Steps, history: list[dict]) -> Path:
    """Write epoch ``epoch``'s checkpoint, keep the newest ``train.keep_checkpoints``; returns its folder."""
    folder = save_checkpoint(run_dir / "checkpoints" / f"epoch_{epoch:04d}", {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": c.model.state_dict(),
        "optimizer": c.optimizer.state_dict(),
        "scheduler": c.scheduler.state_dict(),
        "history": history,
        "config": config_to_dict(cfg),
        "rng": rng_state(),
    })
    for old in epoch_dirs(run_dir / "checkpoints")[: -cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def write_kernel_mosaics(model: nn.Module, folder: Path, tag: str, max_kernels: int = 64,
                         caption: str | None = None, run: str | None = None) -> list[Path]:
    """PNG mosaics of the first and the last depthwise layer: ``<folder>/<tag>_<layer>.png``; the title
    names ``run`` (default: the run folder), ``caption`` (default ``tag``), the layer and its kernel count."""
    from .inits import depthwise_kernels
    from .plots import kernel_mosaic

    layers = list(depthwise_kernels(model))
    picked = [layers[0], layers[-1]] if len(layers) > 1 else layers
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, kernels in picked:
        path = folder / f"{tag}_{name.replace('.', '-')}.png"
        kernel_mosaic(kernels, path, max_kernels=max_kernels,  # the title says "first 64 of N" when it cuts
                      title=f"run {run or folder.parent.name}, {caption or tag}: layer {name}, {kernels.shape[0]} kernels")
        paths.append(path)
    return paths


def _check_finite(losses: list[torch.Tensor], start: int, epoch: int, steps: int, optimizer) -> None:
    if start >= len(losses):
        return
    chunk = torch.stack(losses[start:])
    bad = (~torch.isfinite(chunk)).nonzero()
    if len(bad):
        i = start + int(bad[0, 0])
        raise TrainingDiverged(
            f"non-finite training loss {losses[i].item()} at epoch {epoch}, step {i + 1} of {steps} "
            f"(lr {optimizer.param_groups[0]['lr']:.3g}); lower train.lr or set train.grad_clip")


def _resolve_run_dir(cfg: Config, run_dir: str | Path | None, ckpt: dict | None) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    if ckpt is not None and run_dir_of(ckpt["path"]) is not None:  # continue in the checkpoint's run folder
        return run_dir_of(ckpt["path"])
    base = Path(cfg.output_dir) / (cfg.run_name or cfg.default_run_name())
    if ckpt is not None or not base.exists() or not any(base.iterdir()):
        return base
    i = 1  # never mix two fresh runs in one default folder
    while (base.parent / f"{base.name}-{i}").exists():
        i += 1
    return base.parent / f"{base.name}-{i}"


def _write_run_folder(run_dir: Path, cfg: Config, init_report: dict, history: list[dict], fresh: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:  # stale checkpoints of an earlier run in this folder would be taken for ours
        for old in epoch_dirs(run_dir / "checkpoints"):
            log.warning(f"removing stale checkpoint {old} of an earlier run in {run_dir}")
            shutil.rmtree(old, ignore_errors=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
    (run_dir / "init_report.json").write_text(json.dumps(init_report, indent=2) + "\n")
    with open(run_dir / "metrics.jsonl", "w") as f:  # a resumed run keeps exactly the epochs it resumed
        f.writelines(json.dumps(h) + "\n" for h in history)


def _progress_bar(progress: bool, total: int, initial: int):
    if not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return None
    from tqdm.auto import tqdm

    # disable=None: off when stderr is not a terminal (logs, CI, Ray workers)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None, leave=False)


def _on_off(report) -> str:
    on = sum(layer.on for layer in report.layers)
    off = sum(layer.off for layer in report.layers)
    return f" ({on} On-centre, {off} Off-centre)" if on or off else ""


def _epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"top1 {m['val_top1']:.2f}  top5 {m['val_top5']:.2f}  lr {m['lr']:.3g}  "
            f"{m['images_per_sec']:.0f} img/s  {m['epoch_time_s']:.1f}s")

