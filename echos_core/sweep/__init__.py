"""Sweeps: YAML specs run by Ray Tune (Optuna search, ASHA) and logged to MLflow.

* :mod:`.spec`      parse and validate a spec (``sweeps/*.yaml``), before Ray starts
* :mod:`.trainable` the Ray trainable: one (configuration, seed) trial over the trainer
* :mod:`.runner`    Tuner, search, scheduler, resume, the summary
* :mod:`.cli`       ``echos sweep`` and ``echos ui``

Only :mod:`.spec` is imported here; Ray and MLflow load when a sweep runs.
"""

from .spec import SpecError, SweepSpec, load_spec, parse_spec, smoke_spec

__all__ = ["SpecError", "SweepSpec", "load_spec", "parse_spec", "smoke_spec"]
