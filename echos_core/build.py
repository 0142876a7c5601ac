"""One run's starting point, built in one fixed order: seed, data, model, init.

The trainer and the other-kernel analysis (which rebuilds a trial's exact initial weights) both
call :func:`build_run`, so the order that decides every random number lives here only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import Config
from .inits import InitReport, apply_init
from .seeding import seed_everything

__all__ = ["BuiltRun", "build_run"]


@dataclass
class BuiltRun:
    data: object  # echos_core.data.DataBundle
    model: nn.Module  # on the CPU, its depthwise kernels initialised
    init_report: InitReport


def build_run(cfg: Config) -> BuiltRun:
    """Seed the global generators with ``cfg.seed``, build the data, the model, and init the model.

    ``cfg`` is a validated :class:`Config` (:func:`echos_core.config.load_config`,
    :func:`~echos_core.config.config_from_dict`): nothing here validates it again.
    """
    from .data import build_data
    from .models import create_model

    seed_everything(cfg.seed)
    data = build_data(cfg)  # data first: building it may draw from the global generators
    model = create_model(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans,
                         image_size=cfg.data.image_size)
    report = apply_init(model, cfg.init, cfg.seed)
    return BuiltRun(data=data, model=model, init_report=report)
