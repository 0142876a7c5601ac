"""Validate the trainer configs a sweep's space can produce, before Ray starts.

1. Each parameter alone, at each of its probes (:meth:`Param.probes`: the ends of a range,
   every value of a small int range, every choice, grid value and arm), the rest at base:
   the :class:`~echos_core.config.Config` must build.
2. Combinations of the probes (of every parameter when there are at most 1024, else of the
   parameters that shape the model or its init, else one at a time): the Config must build,
   the model is built on the CPU (once per distinct model section) and
   :func:`echos_core.inits.check_init` run against it, e.g. a DoG gamma range against every
   kernel size the space holds.  Nothing is trained and no data is loaded.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Optional

from ..config import Config, ConfigError
from .spec import Param, SpecError, SweepSpec, inline

__all__ = ["check_trainer_configs"]

# At most this many combinations of probe values are checked (Config + check_init; models are
# built once per distinct model section); beyond, fewer parameters, then one at a time.
_MAX_COMBOS = 1024


_STRUCTURAL = ("model.", "init.", "data.image_size", "data.name", "data.fake_classes")


def check_trainer_configs(spec: SweepSpec) -> int:
    """Validate every trainer config the space can produce at its bounds; returns the number checked.

    1. Each parameter alone, at each of its probes (the rest at base): the Config must build.
    2. All combinations of the probes of every parameter (at most 1024; else of the parameters
       that shape the model or its init: ``model.*``, ``init.*``, image size; else one at a time):
       the Config must build, the model is built on the CPU (once per distinct model section)
       and ``check_init`` run against it, e.g. a DoG gamma range against every kernel size the
       space holds.
    """
    from ..inits import check_init

    checked = 0
    seed = spec.seeds[0]
    # 1. one parameter at a time
    for p in spec.params:
        for v in p.probes():
            _build_or_raise(spec, {p.key: v}, seed, blame=p)
            checked += 1
    for s in spec.seeds:  # seeds are validated by the Config too
        _build_or_raise(spec, {}, s, blame=None)

    # 2. combinations: of every parameter when there are few, else of those that shape the model
    #    or its init (the rest interact with nothing but their own rules, checked in 1.)
    structural = [p for p in spec.params if any(k.startswith(_STRUCTURAL) for k in p.config_keys())]
    for group in (spec.params, structural, None):
        if group is None:  # too many even so: one parameter at a time
            combos = [{}] + [{p.key: v} for p in structural for v in p.probes()]
            break
        if math.prod(len(p.probes()) for p in group) <= _MAX_COMBOS:
            combos = [{}] + [dict(zip([p.key for p in group], vals))
                             for vals in itertools.product(*(p.probes() for p in group)) if vals]
            break
    models: dict[str, Any] = {}
    for combo in combos:
        cfg = _build_or_raise(spec, combo, seed, blame=None)
        model = _model_for(cfg, models, spec, combo)
        try:
            check_init(model, cfg.init)
        except ValueError as e:
            raise SpecError.at(_where(spec, combo), str(e)) from None
        checked += 1
    return checked


def _where(spec: SweepSpec, combo: dict) -> str:
    """``base``, or ``space={the config keys this combination sets}``."""
    return f"space={inline(spec.overrides(combo))}" if combo else "base"


def _build_or_raise(spec: SweepSpec, sampled: dict, seed: int, blame: Optional[Param]) -> Config:
    try:
        return spec.build_config(sampled, seed)
    except ConfigError as e:
        if blame is not None:
            value = sampled[blame.key]
            if not blame.is_arm and e.field == blame.key:
                raise SpecError(f"space.{blame.key}", value, e.rule) from None
            raise SpecError(f"space.{blame.key}", value, f"gives an invalid trainer config: {e}") from None
        if sampled:
            raise SpecError.at(_where(spec, sampled), f"this combination gives an invalid trainer config: {e}") from None
        raise SpecError(f"base.{e.field}" if e.field != "seed" else "seeds", e.value, e.rule) from None


def _num_classes(cfg: Config) -> int:
    """Classes of the data set without loading it (only the model's head depends on it)."""
    return {"fake": cfg.data.fake_classes, "cifar100": 100, "imagefolder": 1000}.get(cfg.data.name, 10)


def _model_for(cfg: Config, cache: dict, spec: SweepSpec, combo: dict):
    """The model of ``cfg`` built on the CPU (cached per model section and input size)."""
    import torch

    from ..models import create_model

    key = inline([dataclasses.asdict(cfg.model), cfg.data.image_size, _num_classes(cfg)])
    if key not in cache:
        torch.manual_seed(0)
        try:
            with torch.device("cpu"):
                cache[key] = create_model(cfg.model, num_classes=_num_classes(cfg), in_chans=3,
                                          image_size=cfg.data.image_size)
        except ConfigError as e:
            if not combo:
                raise SpecError(f"base.{e.field}", e.value, e.rule) from None
            raise SpecError.at(_where(spec, combo), str(e)) from None
        except ValueError as e:
            raise SpecError.at(_where(spec, combo), str(e)) from None
    return cache[key]


