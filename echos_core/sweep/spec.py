"""Sweep specs: a YAML file parsed into a :class:`SweepSpec` and validated before Ray starts.

The format is documented with an annotated example in ``sweeps/README.md``.  In short::

    name, description, base, space, search, num_samples, max_concurrent, scheduler,
    metric, mode, resources, seeds, mlflow, ray, smoke_test, analysis

Validation happens in two steps, both before any Ray process exists:

1. :func:`parse_spec` (here): the spec's own schema (keys, types, ranges, the rules that tie
   them together);
2. :func:`echos_core.sweep.validate.check_trainer_configs`: the trainer configs the space can
   produce, built at the bounds of the space, with ``check_init`` run on the built models.

Every error is a :class:`SpecError` (a :class:`~echos_core.config.ConfigError`): one line
naming the key, the value and the rule; the CLI exits with status 2.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..config import Config, ConfigError, _known_paths, apply_overrides, config_from_dict, set_dotted
from ..validation import choice, float_range, int_range, is_int, is_number, load_yaml, nonempty
from .analysis_spec import AnalysisSpec, parse_analysis

__all__ = [
    "SpecError",
    "Param",
    "SearchSpec",
    "SchedulerSpec",
    "SweepSpec",
    "load_spec",
    "parse_spec",
    "arm_label",
    "possible_values",
    "base_value",
    "inline",
    "SEARCH_ALGORITHMS",
    "SCHEDULERS",
    "PARAM_TYPES",
    "METRICS",
    "PLACEMENTS",
    "DRIVER_CPUS",
]

SEARCH_ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "none")
PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
# What the trainer reports every epoch and a sweep can optimise.
METRICS = ("val_top1", "val_top5", "val_loss", "train_loss")
# resources.placement: Ray's placement-group strategies for a trial's data-parallel workers.
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# A data-parallel trial's own process (it only starts Ray Train and waits) asks for this much CPU;
# Ray needs a request above 0 for a Tune trial (echos_core.sweep.ddp).
DRIVER_CPUS = 0.01
# Keys the sweep sets itself: a trial's seed comes from `seeds`, its folder and MLflow run from Ray.
RESERVED_KEYS = ("seed", "output_dir", "run_name", "mlflow.tracking_uri", "mlflow.experiment")
# An int range with at most this many values is validated at every value, not only its ends.
_INT_PROBE_ALL = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

TOP_KEYS = ("name", "description", "base", "space", "search", "num_samples", "max_concurrent",
            "scheduler", "metric", "mode", "resources", "seeds", "mlflow", "ray", "smoke_test", "analysis")


class SpecError(ConfigError):
    """A sweep spec breaks a rule.  ``str(err)`` is one line: key, value, rule."""

    @classmethod
    def at(cls, where: str, message: str) -> "SpecError":
        """``'<where>: <message>'``, for an error whose message already names the values."""
        err = cls(where, None, message)
        err.args = (f"{where}: {' '.join(message.split())}",)
        return err


# --------------------------------------------------------------------------- the spec


@dataclass
class Param:
    """One dimension of the search space.

    ``key`` is a dotted config key (``init.on_ratio``), or, for *arms*, a free name whose
    values are mappings of several dotted keys (``{init.scheme: dog, init.on_ratio: 0.25}``).
    Arms are sampled by label (:attr:`labels`), which is what Ray, Optuna and the progress
    table see; :meth:`overrides` turns a label back into its config keys.
    """

    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[int] = None
    values: Optional[list] = None
    arms: Optional[dict[str, dict[str, Any]]] = None  # label -> {dotted key: value}

    @property
    def is_arm(self) -> bool:
        return self.arms is not None

    @property
    def labels(self) -> list:
        """What the search samples: the values, or the arm labels."""
        return list(self.arms) if self.arms is not None else list(self.values or [])

    @property
    def size(self) -> Optional[int]:
        """Number of distinct values, None for continuous ranges."""
        if self.type in ("choice", "grid"):
            return len(self.labels)
        if self.type == "int":
            return int((self.high - self.low) // self.step) + 1
        return None

    def probes(self) -> list:
        """The values the trainer config is validated at (bounds, every choice, small int ranges whole)."""
        if self.type in ("choice", "grid"):
            return self.labels
        if self.type == "int":
            if self.size <= _INT_PROBE_ALL:
                return list(range(int(self.low), int(self.high) + 1, int(self.step)))
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def overrides(self, value: Any) -> dict[str, Any]:
        """``{dotted key: value}`` that one sampled value sets."""
        if self.arms is not None:
            return dict(self.arms[value])
        return {self.key: value}

    def config_keys(self) -> set[str]:
        if self.arms is not None:
            return {k for arm in self.arms.values() for k in arm}
        return {self.key}

    def describe(self) -> str:
        if self.type in ("uniform", "loguniform"):
            return f"{self.type} [{self.low:g}, {self.high:g}]"
        if self.type == "int":
            step = f" step {self.step}" if self.step != 1 else ""
            return f"int [{int(self.low)}, {int(self.high)}]{step} ({self.size} values)"
        if self.arms is not None:
            width = max(len(label) for label in self.arms)
            inner = "".join(f"\n      {label:<{width}}  {inline(arm)}" for label, arm in self.arms.items())
            return f"{self.type} of {len(self.arms)} arms:{inner}"
        return f"{self.type} {inline(self.values)}"


@dataclass
class SearchSpec:
    algorithm: str = "optuna"  # optuna (TPE) | random | grid
    seed: int = 0  # sampler seed (optuna, random)
    n_startup_trials: int = 10  # optuna TPE: configurations sampled at random before TPE takes over
    # Configurations run first, each with every seed, before anything is sampled ({param key: value or arm label}).
    points_to_evaluate: list = field(default_factory=list)

    def describe(self) -> str:
        if self.algorithm == "optuna":
            text = f"optuna TPE (seed {self.seed}, {self.n_startup_trials} random start-up configurations)"
        elif self.algorithm == "random":
            text = f"random (optuna RandomSampler, seed {self.seed})"
        else:
            return "grid"
        if self.points_to_evaluate:
            points = "".join(f"\n  first: {inline(p)}" for p in self.points_to_evaluate)
            text += f", after {len(self.points_to_evaluate)} given configurations:{points}"
        return text


@dataclass
class SchedulerSpec:
    type: str = "none"  # asha | none
    max_t: Optional[int] = None  # epochs; default train.epochs
    grace_period: int = 1
    reduction_factor: float = 2.0
    # "points_to_evaluate": ASHA never stops the trials of search.points_to_evaluate (their seeds stay
    # paired, a complete comparison); their results still fill ASHA's rungs, against which it judges the rest.
    full_budget: Optional[str] = None

    def describe(self) -> str:
        if self.type == "none":
            return "none (every trial runs its full train.epochs)"
        spared = (", search.points_to_evaluate run their full budget (ASHA judges only the sampled configurations)"
                  if self.full_budget else "")
        return (f"asha (max_t {self.max_t}, grace_period {self.grace_period}, "
                f"reduction_factor {self.reduction_factor:g}, time unit: epoch{spared})")


@dataclass
class SweepSpec:
    name: str
    base: dict
    params: list[Param] = field(default_factory=list)
    description: str = ""
    search: SearchSpec = field(default_factory=SearchSpec)
    num_samples: int = 1  # configurations (optuna, random); each runs once per seed
    max_concurrent: Optional[int] = None  # None: as many as the resources allow
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    metric: str = "val_top1"
    mode: str = "max"
    cpus: float = 1.0  # per trial (per worker when workers > 1)
    gpus: float = 0.0  # per trial (per worker when workers > 1), fractions allowed for one worker
    workers: int = 1  # data-parallel processes per trial (Ray Train); 1 = the trial trains itself
    placement: str = "PACK"  # how Ray places a trial's workers on nodes (PLACEMENTS)
    seeds: list[int] = field(default_factory=lambda: [0])
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    experiment: str = ""  # default: name
    storage_path: str = "ray_results"
    max_failures: int = 2
    keep_checkpoints: int = 2
    num_cpus: Optional[int] = None  # local Ray instance only; None = all cores
    smoke_test: dict = field(default_factory=dict)  # dotted overrides for --smoke-test
    analysis: Optional[AnalysisSpec] = None  # the declared question (echos_core.sweep.analysis_spec)
    source: Optional[str] = None

    @property
    def n_configs(self) -> int:
        """Distinct configurations the search runs (before seeds)."""
        if self.search.algorithm == "grid":
            return math.prod(p.size for p in self.params)
        return self.num_samples

    @property
    def n_trials(self) -> int:
        return self.n_configs * len(self.seeds)

    @property
    def trial_cpus(self) -> float:
        """CPUs one trial holds in all: its workers' and, when data-parallel, its own small share."""
        return self.cpus if self.workers == 1 else self.workers * self.cpus + DRIVER_CPUS

    @property
    def trial_gpus(self) -> float:
        return self.gpus * self.workers

    def describe_resources(self) -> str:
        """``2 CPU, 0 GPU`` or ``8 workers x (12 CPU, 1 GPU), placement PACK``."""
        one = f"{self.cpus:g} CPU, {self.gpus:g} GPU"
        return one if self.workers == 1 else f"{self.workers} workers x ({one}), placement {self.placement}"

    def param(self, key: str) -> Param:
        return next(p for p in self.params if p.key == key)

    def overrides(self, sampled: dict) -> dict[str, Any]:
        """Dotted config keys set by one sampled point (``{param key: value or arm label}``)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.key in sampled:
                out.update(p.overrides(sampled[p.key]))
        return out

    def config_dict(self, sampled: dict, seed: int) -> dict:
        """The nested trainer config of one trial: base, then the sampled values, then the seed."""
        d = copy.deepcopy(self.base)
        apply_overrides(d, self.overrides(sampled))
        d["seed"] = seed
        return d

    def build_config(self, sampled: dict, seed: int) -> Config:
        return config_from_dict(self.config_dict(sampled, seed))

    def summary_dict(self) -> dict:
        """Everything that defines the sweep, JSON-ready (stored beside the Ray experiment)."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d


def inline(v: Any) -> str:
    """One-line YAML spelling of a value: ``dog``, ``0.25``, ``null``, ``[3, 5]``, ``{init.scheme: dog}``."""
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return yaml.safe_dump([v], default_flow_style=True, width=10**6).strip()[1:-1]


# --------------------------------------------------------------------------- parsing helpers


def _mapping(d: Any, key: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SpecError(key, d, "must be a mapping")
    return d


def _only_keys(d: dict, allowed: Iterable[str], prefix: str) -> None:
    allowed = tuple(allowed)
    for k, v in d.items():
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise SpecError(where, v, f"unknown key; allowed{' in ' + prefix if prefix else ''}: {', '.join(allowed)}")


def _int(d: dict, k: str, key: str, default: Any, lo: Optional[int] = None) -> Any:
    v = d.get(k, default)
    if v is not None:
        int_range(key, v, lo, None, error=SpecError)
    return v


def _num(d: dict, k: str, key: str, default: Any) -> Any:
    v = d.get(k, default)
    float_range(key, v, None, None, error=SpecError)
    return v


def _str(d: dict, k: str, key: str, default: Any, choices: Optional[tuple] = None) -> Any:
    v = d.get(k, default)
    if v is None:
        return None
    nonempty(key, v, error=SpecError, hint=f": one of {', '.join(choices)}" if choices else "")
    if choices:
        choice(key, v, choices, error=SpecError)
    return v


# --------------------------------------------------------------------------- parse


def load_spec(path: str | Path, *, tracking_uri: Optional[str] = None,
              storage_path: Optional[str] = None) -> SweepSpec:
    """Read and parse a spec file (``tracking_uri``/``storage_path`` override the file).

    The trainer configs its space can produce are checked by
    :func:`echos_core.sweep.validate.check_trainer_configs`, which the caller runs."""
    p = Path(path)
    data = load_yaml(p, "SPEC", error=SpecError)
    if not isinstance(data, dict):
        raise SpecError("SPEC", str(path), "must contain a mapping at the top level")
    if tracking_uri is not None:
        data.setdefault("mlflow", {})
        if not isinstance(data["mlflow"], dict):
            raise SpecError("mlflow", data["mlflow"], "must be a mapping")
        data["mlflow"]["tracking_uri"] = tracking_uri
    if storage_path is not None:
        data.setdefault("ray", {})
        if not isinstance(data["ray"], dict):
            raise SpecError("ray", data["ray"], "must be a mapping")
        data["ray"]["storage_path"] = storage_path
    spec = parse_spec(data, base_dir=p.parent)
    spec.source = str(p)
    return spec


def parse_spec(data: dict, base_dir: str | Path = ".") -> SweepSpec:
    """Check the spec's own schema and rules; return the :class:`SweepSpec`."""
    data = _mapping(data, "spec")
    _only_keys(data, TOP_KEYS, "")
    name, description = _parse_name(data)
    base = _parse_base(data.get("base"), Path(base_dir))
    search = _parse_search(data.get("search", "optuna"))
    params = _parse_space(data.get("space"), search.algorithm)
    num_samples = _parse_num_samples(data, search.algorithm, params)
    max_concurrent = _int(data, "max_concurrent", "max_concurrent", None, lo=1)
    seeds = _parse_seeds(data.get("seeds", [0]))
    metric = _str(data, "metric", "metric", "val_top1", METRICS)
    mode = _str(data, "mode", "mode", "max", ("min", "max"))
    resources = _parse_resources(_mapping(data.get("resources"), "resources"))
    scheduler = _parse_scheduler(data.get("scheduler", "none"))
    ml = _mapping(data.get("mlflow"), "mlflow")
    _only_keys(ml, ("tracking_uri", "experiment"), "mlflow")
    tracking_uri = _str(ml, "tracking_uri", "mlflow.tracking_uri", None)
    experiment = _str(ml, "experiment", "mlflow.experiment", name)
    ray = _parse_ray(_mapping(data.get("ray"), "ray"))
    smoke = _mapping(data.get("smoke_test"), "smoke_test")  # smoke-test overrides
    for k, v in smoke.items():
        _check_config_key(f"smoke_test.{k}", k, v)

    spec = SweepSpec(name=name, base=base, params=params, description=description, search=search,
                     num_samples=num_samples, max_concurrent=max_concurrent, scheduler=scheduler,
                     metric=metric, mode=mode, seeds=seeds, tracking_uri=tracking_uri, experiment=experiment,
                     smoke_test=dict(smoke), **resources, **ray)
    _check_cross_rules(spec)
    _check_points(spec)
    if data.get("analysis") is not None:
        spec.analysis = parse_analysis(data["analysis"], params=params, base_value=lambda k: base_value(base, k),
                                       metric=metric, metrics=METRICS)
    return spec


def _parse_name(data: dict) -> tuple[str, str]:
    """(name, description) of the sweep."""
    name = _str(data, "name", "name", None)
    if name is None:
        raise SpecError("name", None, "is required (the sweep's name: letters, digits, '-', '_', '.')")
    if not _NAME.match(name):
        raise SpecError("name", name, "must start with a letter or digit and hold only letters, digits, '-', '_', '.'")
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        raise SpecError("description", description, "must be a string")
    return name, description.strip()


def _parse_num_samples(data: dict, algorithm: str, params: list) -> int:
    """How many configurations: the grid runs once (per seed); a search needs a space and ``num_samples``."""
    if algorithm == "grid":
        if data.get("num_samples") not in (None, 1):
            raise SpecError("num_samples", data["num_samples"],
                            "must be left out with search grid (the grid is run once, per seed)")
        return 1
    if not params:
        raise SpecError("space", data.get("space"), f"is empty; search {algorithm} needs at least one "
                                                    "parameter (use search grid to repeat the base config over seeds)")
    num_samples = _int(data, "num_samples", "num_samples", None, lo=1)
    if num_samples is None:
        raise SpecError("num_samples", None, f"is required with search {algorithm} "
                                             "(configurations to sample; each runs once per seed)")
    return num_samples


def _parse_seeds(seeds: Any) -> list[int]:
    if is_int(seeds):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise SpecError("seeds", seeds, "must be a non-empty list of integers")
    for s in seeds:
        if not is_int(s) or not 0 <= s < 2**32:
            raise SpecError("seeds", s, "every seed must be an integer in [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise SpecError("seeds", seeds, "must not repeat a seed")
    return list(seeds)


def _parse_resources(res: dict) -> dict:
    """``cpus``, ``gpus``, ``workers`` and ``placement`` of one trial (the SweepSpec fields)."""
    _only_keys(res, ("cpus", "gpus", "workers", "placement"), "resources")
    cpus = _num(res, "cpus", "resources.cpus", 1)
    if cpus <= 0:
        raise SpecError("resources.cpus", cpus, "must be > 0")
    gpus = _num(res, "gpus", "resources.gpus", 0)
    if gpus < 0:
        raise SpecError("resources.gpus", gpus, "must be >= 0 (fractions such as 0.5 share a GPU)")
    if gpus > 1 and gpus != int(gpus):
        raise SpecError("resources.gpus", gpus, "must be a whole number when above 1")
    workers = _int(res, "workers", "resources.workers", 1, lo=1)
    placement = _str(res, "placement", "resources.placement", "PACK", PLACEMENTS)
    if workers > 1 and 0 < gpus < 1:
        raise SpecError("resources.gpus", gpus, "must be a whole number with workers > 1 "
                                                "(each data-parallel worker needs GPUs of its own)")
    return {"cpus": cpus, "gpus": gpus, "workers": workers, "placement": placement}


def _parse_ray(ray: dict) -> dict:
    """``storage_path``, ``max_failures``, ``keep_checkpoints`` and ``num_cpus`` (the SweepSpec fields)."""
    _only_keys(ray, ("storage_path", "max_failures", "keep_checkpoints", "num_cpus"), "ray")
    return {"storage_path": _str(ray, "storage_path", "ray.storage_path", "ray_results"),
            "max_failures": _int(ray, "max_failures", "ray.max_failures", 2, lo=0),
            "keep_checkpoints": _int(ray, "keep_checkpoints", "ray.keep_checkpoints", 2, lo=1),
            "num_cpus": _int(ray, "num_cpus", "ray.num_cpus", None, lo=1)}


def _parse_base(raw: Any, base_dir: Path) -> dict:
    if raw is None:
        raise SpecError("base", None, "is required: the trainer config (a mapping, or the path of an `echos train` YAML)")
    if isinstance(raw, str):
        p = Path(raw)
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise SpecError("base", raw, f"file does not exist (looked for {p})")
        raw = load_yaml(p, "base", error=SpecError) or {}
    if not isinstance(raw, dict):
        raise SpecError("base", raw, "must be a mapping (the trainer config tree) or the path of a YAML file")
    base = copy.deepcopy(raw)
    for key in ("seed", "mlflow.tracking_uri", "mlflow.experiment"):  # output_dir/run_name: Ray's trial folder wins
        head, _, rest = key.partition(".")
        if head in base and (not rest or (isinstance(base[head], dict) and rest in base[head])):
            val = base[head] if not rest else base[head][rest]
            raise SpecError(f"base.{key}", val, _reserved_rule(key))
    try:
        config_from_dict(base)
    except ConfigError as e:
        raise SpecError(f"base.{e.field}", e.value, e.rule) from None
    return base


def _reserved_rule(key: str) -> str:
    if key == "seed":
        return "is set by the sweep: list seeds under `seeds`"
    if key.startswith("mlflow."):
        return "is set by the sweep: use the spec's `mlflow` section"
    return "is set by the sweep (every trial gets its own folder and MLflow run)"


def _parse_search(raw: Any) -> SearchSpec:
    if isinstance(raw, str):
        raw = {"algorithm": raw}
    raw = _mapping(raw, "search")
    _only_keys(raw, ("algorithm", "seed", "n_startup_trials", "points_to_evaluate"), "search")
    algo = _str(raw, "algorithm", "search.algorithm", "optuna", SEARCH_ALGORITHMS)
    seed = _int(raw, "seed", "search.seed", 0, lo=0)
    n_startup = _int(raw, "n_startup_trials", "search.n_startup_trials", 10, lo=1)
    if algo != "optuna" and "n_startup_trials" in raw:
        raise SpecError("search.n_startup_trials", raw["n_startup_trials"], "only applies to search algorithm optuna")
    if algo == "grid" and "seed" in raw:
        raise SpecError("search.seed", raw["seed"], "does not apply to search grid (nothing is sampled)")
    points = raw.get("points_to_evaluate", [])
    if algo == "grid" and points:
        raise SpecError("search.points_to_evaluate", points, "does not apply to search grid (the grid runs every point)")
    if not isinstance(points, list) or not all(isinstance(pt, dict) and pt for pt in points):
        raise SpecError("search.points_to_evaluate", points, "must be a list of mappings {parameter: value}")
    return SearchSpec(algorithm=algo, seed=seed, n_startup_trials=n_startup, points_to_evaluate=points)


def _parse_scheduler(raw: Any) -> SchedulerSpec:
    if raw is None or raw == "none":
        return SchedulerSpec(type="none")
    if isinstance(raw, str):
        raw = {"type": raw}
    raw = _mapping(raw, "scheduler")
    typ = _str(raw, "type", "scheduler.type", None, SCHEDULERS)
    if typ is None:
        raise SpecError("scheduler.type", None, f"is required: one of {', '.join(SCHEDULERS)}")
    if typ == "none":
        _only_keys(raw, ("type",), "scheduler")
        return SchedulerSpec(type="none")
    _only_keys(raw, ("type", "max_t", "grace_period", "reduction_factor", "full_budget"), "scheduler")
    full_budget = raw.get("full_budget")
    if full_budget not in (None, "points_to_evaluate"):
        raise SpecError("scheduler.full_budget", full_budget, "must be points_to_evaluate (ASHA never stops the "
                                                               "trials of search.points_to_evaluate) or left out")
    max_t = _int(raw, "max_t", "scheduler.max_t", None, lo=1)
    grace = _int(raw, "grace_period", "scheduler.grace_period", 1, lo=1)
    rf = _num(raw, "reduction_factor", "scheduler.reduction_factor", 2)
    if rf < 2:
        raise SpecError("scheduler.reduction_factor", rf, "must be >= 2 (keep the best 1/reduction_factor at each rung)")
    if max_t is not None and grace > max_t:
        raise SpecError("scheduler.grace_period", grace, f"must be <= scheduler.max_t ({max_t})")
    return SchedulerSpec(type=typ, max_t=max_t, grace_period=grace, reduction_factor=float(rf), full_budget=full_budget)


def _check_config_key(where: str, key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise SpecError(where, key, "must be a dotted config key such as init.on_ratio")
    if key in RESERVED_KEYS:
        raise SpecError(where, value, _reserved_rule(key))
    try:
        set_dotted({}, key, value)
    except ConfigError as e:
        raise SpecError(where, value, e.rule) from None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int, float))


def _parse_space(raw: Any, algorithm: str) -> list[Param]:
    raw = _mapping(raw, "space")
    params = [_parse_param(key, spec, algorithm) for key, spec in raw.items()]
    owner: dict[str, str] = {}
    for p in params:
        for k in sorted(p.config_keys()):
            if k in owner:
                raise SpecError(f"space.{p.key}", k, f"sets a config key that space.{owner[k]} also sets")
            owner[k] = p.key
    return params


def _parse_param(key: Any, spec: Any, algorithm: str) -> Param:
    where = f"space.{key}"
    if not isinstance(key, str) or not key:
        raise SpecError("space", key, "keys must be dotted config keys (init.on_ratio) or arm names")
    if not isinstance(spec, dict):
        raise SpecError(where, spec, "must be a mapping with `type` and its arguments, e.g. {type: uniform, low: 0, high: 1}")
    typ = _str(spec, "type", f"{where}.type", None, PARAM_TYPES)
    if typ is None:
        raise SpecError(f"{where}.type", None, f"is required: one of {', '.join(PARAM_TYPES)}")
    if typ == "grid" and algorithm != "grid":
        raise SpecError(f"{where}.type", typ, f"grid parameters need search grid (search is {algorithm}; use choice)")
    if algorithm == "grid" and typ != "grid":
        raise SpecError(f"{where}.type", typ, "must be grid with search grid (every dimension is enumerated)")
    if typ == "int":
        return _parse_int_range(key, spec, where)
    if typ in ("uniform", "loguniform"):
        return _parse_float_range(key, spec, where, typ)
    _only_keys(spec, ("type", "values"), where)
    values = spec.get("values")
    named = isinstance(values, dict)  # {label: arm, ...}: arms with chosen labels
    if not (isinstance(values, list) or named) or not values:
        raise SpecError(f"{where}.values", values, f"must be a non-empty list (or a mapping of labelled arms) for type {typ}")
    if named or all(isinstance(v, dict) for v in values):
        return _parse_arms(key, values, where, typ)
    return _parse_values(key, values, where, typ)


def _required_bounds(spec: dict, where: str, typ: str) -> None:
    for b in ("low", "high"):
        if b not in spec:
            raise SpecError(f"{where}.{b}", None, f"is required for type {typ}")


def _parse_int_range(key: str, spec: dict, where: str) -> Param:
    _only_keys(spec, ("type", "low", "high", "step"), where)
    _required_bounds(spec, where, "int")
    low = _int(spec, "low", f"{where}.low", None)
    high = _int(spec, "high", f"{where}.high", None)
    step = _int(spec, "step", f"{where}.step", 1, lo=1)
    _check_config_key(where, key, low)
    if low > high:
        raise SpecError(f"{where}.low", low, f"must be <= high ({high})")
    if (high - low) % step:
        raise SpecError(f"{where}.high", high, f"high - low must be a multiple of step ({step}) "
                                          f"so that high is reachable from low")
    return Param(key=key, type="int", low=low, high=high, step=step)


def _parse_float_range(key: str, spec: dict, where: str, typ: str) -> Param:
    _only_keys(spec, ("type", "low", "high"), where)
    _check_config_key(where, key, spec.get("low"))
    _required_bounds(spec, where, typ)
    low, high = spec["low"], spec["high"]
    for b, v in (("low", low), ("high", high)):
        if not is_number(v):
            raise SpecError(f"{where}.{b}", v, "must be a finite number")
    if low >= high:
        raise SpecError(f"{where}.low", low, f"must be < high ({high}); use a constant in base for a single value")
    if typ == "loguniform" and low <= 0:
        raise SpecError(f"{where}.low", low, "must be > 0 for loguniform")
    return Param(key=key, type=typ, low=float(low), high=float(high))


def _parse_arms(key: str, values: list | dict, where: str, typ: str) -> Param:
    """An arm dimension: a list of mappings (labelled from their values) or a mapping {label: arm}."""
    named = isinstance(values, dict)
    items = list(values.items()) if named else [(None, v) for v in values]
    if key in _known_paths():
        raise SpecError(f"{where}.values", items[0][1], "must be plain values for a config key; mappings of "
                                                   "several config keys (arms) need a name that is not a config key")
    arms: dict[str, dict] = {}
    seen: set[str] = set()
    for i, (label, arm) in enumerate(items):
        at = f"{where}.values.{label}" if named else f"{where}.values[{i}]"
        if named and not (isinstance(label, str) and _NAME.match(label)):
            raise SpecError(at, label, "an arm label must be letters, digits, '-', '_', '.'")
        if not isinstance(arm, dict) or not arm:
            raise SpecError(at, arm, "an arm must be a mapping that sets at least one config key")
        for k, v in arm.items():
            _check_config_key(f"{at}.{k}", k, v)
            if not _scalar(v):
                raise SpecError(f"{at}.{k}", v, "must be a plain value (number, string, bool, null)")
        label = label if named else arm_label(arm)
        fingerprint = inline(dict(sorted(arm.items())))
        if fingerprint in seen or label in arms:
            raise SpecError(at, arm, "repeats an earlier arm")
        seen.add(fingerprint)
        arms[label] = dict(arm)
    return Param(key=key, type=typ, arms=arms)


def _parse_values(key: str, values: list, where: str, typ: str) -> Param:
    for i, v in enumerate(values):
        if isinstance(v, dict):
            raise SpecError(f"{where}.values[{i}]", v, "mixes a mapping (arm) with plain values; use one or the other")
        if not _scalar(v):
            raise SpecError(f"{where}.values[{i}]", v, "must be a plain value (number, string, bool, null)")
    _check_config_key(where, key, values[0])
    if len({inline(v) for v in values}) != len(values):
        raise SpecError(f"{where}.values", values, "must not repeat a value")
    return Param(key=key, type=typ, values=list(values))


def arm_label(arm: dict) -> str:
    """A short readable label: ``{init.scheme: dog, init.on_ratio: 0.25}`` -> ``scheme=dog,on_ratio=0.25``."""
    parts = []
    for k, v in arm.items():
        parts.append(f"{k.rsplit('.', 1)[-1]}={inline(v)}")
    return ",".join(parts)


def _check_cross_rules(spec: SweepSpec) -> None:
    """Rules that tie sections together (the trainer configs themselves come later)."""
    device = str(spec.base.get("train", {}).get("device", "auto"))
    if spec.gpus == 0 and device.startswith("cuda"):
        raise SpecError("resources.gpus", spec.gpus, f"is 0 but base train.device is {device!r}: "
                                                "a trial without a GPU cannot use one")
    if spec.gpus > 0 and device == "cpu":
        raise SpecError("resources.gpus", spec.gpus, "is > 0 but base train.device is 'cpu': the GPU would sit idle")
    if spec.workers > 1:
        _check_data_parallel(spec, device)
    sch = spec.scheduler
    if sch.type == "asha":
        epochs = possible_values(spec, "train.epochs")
        lo = min(epochs)
        if sch.max_t is None:
            if len(epochs) > 1:
                raise SpecError("scheduler.max_t", None, "is required when train.epochs is searched")
            sch.max_t = lo
        if sch.max_t > lo:
            raise SpecError("scheduler.max_t", sch.max_t, f"must be <= train.epochs ({lo}): a trial never reports "
                                                     "beyond its own train.epochs")
        if sch.grace_period > sch.max_t:
            raise SpecError("scheduler.grace_period", sch.grace_period, f"must be <= scheduler.max_t ({sch.max_t})")
        if spec.n_trials < 2:
            raise SpecError("scheduler.type", "asha", "needs at least 2 trials to compare; use scheduler none")


def _check_data_parallel(spec: SweepSpec, device: str) -> None:
    """workers > 1: every global batch splits evenly over the workers; each worker picks its own device."""
    if re.fullmatch(r"cuda:\d+", device):
        raise SpecError("base.train.device", device, f"must be 'cuda' (or auto) with resources.workers "
                                                     f"{spec.workers}: Ray gives each worker its own GPU")
    for bs in possible_values(spec, "train.batch_size"):
        if is_int(bs) and int(bs) % spec.workers:
            raise SpecError("train.batch_size", bs, f"must be a multiple of resources.workers ({spec.workers}): "
                                                    "the global batch is split evenly over the workers")


def _check_points(spec: SweepSpec) -> None:
    """search.points_to_evaluate: whole configurations of the space, within it, no more than num_samples;
    scheduler.full_budget needs them."""
    points = spec.search.points_to_evaluate
    if spec.scheduler.full_budget and not points:
        raise SpecError("scheduler.full_budget", spec.scheduler.full_budget, "needs search.points_to_evaluate")
    if len(points) > spec.num_samples:
        raise SpecError("search.points_to_evaluate", f"{len(points)} points", f"must be at most num_samples "
                                                                             f"({spec.num_samples}) configurations")
    keys = [p.key for p in spec.params]
    for i, point in enumerate(points):
        where = f"search.points_to_evaluate[{i}]"
        if set(point) != set(keys):
            raise SpecError(where, inline(point), f"must give every parameter of the space, no other: {', '.join(keys)}")
        for p in spec.params:
            _check_point_value(f"{where}.{p.key}", p, point[p.key])
    if len({inline(pt) for pt in points}) != len(points):
        raise SpecError("search.points_to_evaluate", inline(points), "must not repeat a configuration")


def _check_point_value(where: str, p: Param, v: Any) -> None:
    if p.type in ("choice", "grid"):
        if v not in p.labels:
            what = "arm labels" if p.is_arm else "values"
            raise SpecError(where, v, f"must be one of the parameter's {what}: {', '.join(map(inline, p.labels))}")
    elif p.type == "int":
        if not is_int(v) or not p.low <= v <= p.high or (v - p.low) % p.step:
            raise SpecError(where, v, f"must be an integer in [{int(p.low)}, {int(p.high)}] step {int(p.step)}")
    elif not is_number(v) or not p.low <= v <= p.high:
        raise SpecError(where, v, f"must be a number in [{p.low:g}, {p.high:g}]")


def possible_values(spec: SweepSpec, key: str) -> list:
    """Every value ``key`` can take in this sweep (its base value if the space leaves it alone)."""
    for p in spec.params:
        if key in p.config_keys():
            if p.arms is not None:
                base = base_value(spec.base, key)
                return [arm.get(key, base) for arm in p.arms.values()]
            return p.probes()
    return [base_value(spec.base, key)]


def base_value(base: dict, key: str) -> Any:
    """The value of dotted ``key`` in the nested ``base`` config, or the Config default."""
    cur: Any = base
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            cfg: Any = Config()
            for attr in key.split("."):
                cfg = getattr(cfg, attr)
            return cfg
        cur = cur[part]
    return cur
