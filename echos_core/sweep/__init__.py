"""Sweeps: YAML specs run by Ray Tune (Optuna search, ASHA) and logged to MLflow.

* :mod:`.spec`      the spec: parse a YAML file (``sweeps/*.yaml``) and check its own rules
* :mod:`.validate`  the trainer configs the space can produce, at its bounds (check_init too)
* :mod:`.smoke`     ``--smoke-test``: the same spec with a tiny budget
* :mod:`.trainable` the Ray trainable: one (configuration, seed) trial over the trainer
* :mod:`.runner`    Tuner, search, scheduler, Ray start-up, resume
* :mod:`.status`    the driver-side Tune callback marking how each trial ended in MLflow
* :mod:`.watchdog`  ends a killed driver's local Ray instance and marks its runs interrupted
* :mod:`.summary`   what ``--dry-run`` and the end of a sweep print
* :mod:`.cli`       ``echos sweep``

Nothing here imports Ray or MLflow at package import; they load when a sweep runs.
"""

import os as _os

# Ray (>= 2.43) relaunches trial workers through `uv run` when the driver itself runs under
# `uv run` (its uv runtime-env hook).  The workers then resolve a project from their own working
# folder; when that is not this project (a test's temp folder, `uv run --project ...` from
# elsewhere) they die at start and the sweep waits forever.  Trial workers must use the Python
# that started Ray on each node, as on any cluster, so echos turns the hook off unless the user
# has set RAY_ENABLE_UV_RUN_RUNTIME_ENV.  This must happen before Ray is first imported.
_os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from .smoke import smoke_spec
from .spec import SpecError, SweepSpec, load_spec, parse_spec
from .validate import check_trainer_configs

__all__ = ["SpecError", "SweepSpec", "load_spec", "parse_spec", "check_trainer_configs", "smoke_spec"]
