"""``--smoke-test``: the same sweep with a tiny budget, runnable on this machine."""

from __future__ import annotations

import copy
import math
import os

from ..config import ConfigError, apply_overrides, config_from_dict
from .spec import DRIVER_CPUS, SpecError, SweepSpec, base_value, possible_values

__all__ = ["smoke_spec"]


_NEEDS_FILES = ("cifar10", "cifar100", "imagefolder")


def smoke_spec(spec: SweepSpec, cuda_available: bool = False) -> tuple[SweepSpec, list[str]]:
    """The same sweep with a tiny budget, runnable on this machine; returns (spec, notes).

    * few trials: 2 sampled configurations x 2 seeds (optuna, random; with ``search.points_to_evaluate``,
      every given configuration and 1 sampled one), or every grid dimension cut to its first and last
      value x 1 seed (grid);
    * 2 epochs of at most 3 steps, batches of at most 32 (8 above 64 px), at most 256/64
      training/validation images; data sets that need files (CIFAR, ImageFolder) become
      ``fake`` data with the same image size and number of classes;
    * no GPU (and no torch.compile) when this machine has none.

    The caps apply to the base config and to whatever the space sets (arms, choices);
    the spec's own ``smoke_test`` overrides come last.
    """
    s = copy.deepcopy(spec)
    notes: list[str] = []
    s.name = f"{spec.name}-smoke"
    s.experiment = f"{spec.experiment}-smoke"
    _fewer_trials(s)
    caps = _caps(s, cuda_available, notes)
    name = base_value(s.base, "data.name")
    if name in _NEEDS_FILES:
        s.base["data"]["fake_classes"] = {"cifar10": 10, "cifar100": 100}.get(name, 10)
        s.base["data"].pop("root", None)
    apply_overrides(s.base, {k: cap(base_value(s.base, k)) for k, cap in caps.items()})
    _cap_space(s, caps)
    if s.scheduler.type == "asha":
        s.scheduler.max_t = min(possible_values(s, "train.epochs"))
        s.scheduler.grace_period = 1
    s.max_concurrent = None
    apply_overrides(s.base, dict(spec.smoke_test))
    if name in _NEEDS_FILES:
        notes.append(f"data {name} replaced by fake data ({s.base['data']['fake_classes']} classes, "
                     f"{base_value(s.base, 'data.image_size')} px)")
    if s.scheduler.type == "asha" and s.n_trials < 2:
        s.scheduler.type = "none"
    try:
        config_from_dict({**s.base, "seed": s.seeds[0]})
    except ConfigError as e:
        raise SpecError(f"smoke_test.{e.field}", e.value, e.rule) from None
    return s, notes


def _fewer_trials(s: SweepSpec) -> None:
    """Seeds, samples and grid values of a smoke test (see :func:`smoke_spec`)."""
    s.seeds = s.seeds[:1] if s.search.algorithm == "grid" else s.seeds[:2]
    points = s.search.points_to_evaluate
    s.num_samples = min(s.num_samples, len(points) + 1 if points else 2)
    for p in s.params:
        if p.type == "grid" and p.size > 2:
            keep = [p.labels[0], p.labels[-1]]
            if p.arms is not None:
                p.arms = {k: p.arms[k] for k in keep}
            else:
                p.values = keep


def _caps(s: SweepSpec, cuda_available: bool, notes: list[str]) -> dict:
    """{config key: its smoke-test cap}; fits the trial's resources to this machine."""
    image_size = base_value(s.base, "data.image_size")
    caps = {
        "train.epochs": lambda v: min(v, 2),
        "train.warmup_epochs": lambda v: min(v, 0.5),
        "train.steps_per_epoch": lambda v: min(v or 3, 3),
        "train.batch_size": lambda v: min(v, 32 if image_size <= 64 else 8),
        "data.fake_size": lambda v: min(v, 128),
        "data.train_limit": lambda v: min(v or 256, 256),
        "data.val_limit": lambda v: min(v or 64, 64),
        "data.num_workers": lambda v: 0,
        "data.name": lambda v: "fake" if v in _NEEDS_FILES else v,
        "data.download": lambda v: False,
    }
    if not cuda_available:
        caps["train.device"] = lambda v: "cpu" if str(v).startswith("cuda") else v
        caps["train.compile"] = lambda v: False
        if s.gpus:
            notes.append(f"resources.gpus {s.gpus:g} -> 0 (no GPU here)")
        s.gpus = 0.0
    local_cpus = os.cpu_count() or 1
    if s.workers > 1:
        _smoke_workers(s, local_cpus, notes)
    elif s.cpus > local_cpus:
        notes.append(f"resources.cpus {s.cpus:g} -> {local_cpus} (the cores of this machine)")
        s.cpus = float(local_cpus)
    return caps


def _cap_space(s: SweepSpec, caps: dict) -> None:
    """The caps applied to what the space sets too (arms, choice and grid values)."""
    for p in s.params:
        if p.arms is not None:
            for arm in p.arms.values():
                for k in arm:
                    if k in caps:
                        arm[k] = caps[k](arm[k])
        elif p.key in caps:
            if p.type not in ("choice", "grid"):
                raise SpecError(f"space.{p.key}", p.type, "--smoke-test cannot cut a searched range of this key; "
                                                          "use choice or grid values")
            p.values = list(dict.fromkeys(caps[p.key](v) for v in p.values))


def _smoke_workers(s, local_cpus: int, notes: list[str]) -> None:
    """A data-parallel trial shrunk to this machine: at most 2 workers on one node, within its cores."""
    workers = min(s.workers, 2)
    cpus = min(s.cpus, math.floor((local_cpus - DRIVER_CPUS) / workers * 100) / 100)
    if (workers, cpus, s.placement) != (s.workers, s.cpus, "PACK"):
        notes.append(f"resources {s.describe_resources()} -> {workers} workers x {cpus:g} CPU, placement PACK "
                     "(this machine)")
    s.workers, s.cpus, s.placement = workers, cpus, "PACK"
