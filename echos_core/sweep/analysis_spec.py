"""The ``analysis:`` section of a sweep spec: the question declared before anything runs.

::

    analysis:
      primary:                        # one contrast between two arms, or one trend
        contrast: [{init.scheme: dog, init.on_ratio: 1.0}, {init.scheme: dog, init.on_ratio: 0.5}]
        model: pooled                 # pooled (arm + seed OLS over `pool`) | paired (paired t)
      secondary:                      # Holm-adjusted as one family
        - {contrast: [{init.scheme: dog, init.on_ratio: 0.0}, {init.scheme: dog, init.on_ratio: 0.5}]}
        - {trend: init.on_ratio}      # slope over a numeric key, seed-blocked, over `pool`
      pool: {init.scheme: dog}        # trials in the pooled model (default: every trial)
      alpha: 0.05                     # two-sided
      margin: 1.0                     # equivalence margin m (metric units: points for val_top1)
      metric: val_top1                # default: the spec's metric
      target_difference: 2.0          # the smallest difference worth finding (for the power table)
      pilot_sd: 1.9                   # sd of a paired difference; or {sweep: NAME[, tracking_uri: URI]}

An arm is named by the config keys that pick it out (``{init.scheme: kaiming}``); every key must be
one the sweep can set to that value.  :func:`parse_analysis` checks all of it and raises a one-line
:class:`~echos_core.config.ConfigError`.  The report (:mod:`echos_core.report.declared`) and the
power table of ``--dry-run`` (:func:`power_lines`) read the parsed :class:`AnalysisSpec`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..config import ConfigError

__all__ = ["Comparison", "AnalysisSpec", "parse_analysis", "analysis_from_dict", "power_lines", "MODELS",
           "arm_text", "amount"]

MODELS = ("pooled", "paired")
_KEYS = ("primary", "secondary", "pool", "alpha", "margin", "metric", "target_difference", "pilot_sd")


@dataclass
class Comparison:
    """One declared comparison: ``arm - versus`` (a contrast) or the slope over ``trend``."""

    arm: Optional[dict] = None
    versus: Optional[dict] = None
    trend: Optional[str] = None
    model: str = "pooled"

    @property
    def is_trend(self) -> bool:
        return self.trend is not None

    def describe(self) -> str:
        if self.is_trend:
            return f"trend over {self.trend} (seed-blocked linear model over the pool)"
        how = "pooled arm + seed model" if self.model == "pooled" else "paired t-test"
        return f"{arm_text(self.arm)} - {arm_text(self.versus)} ({how})"

    def to_dict(self) -> dict:
        if self.is_trend:
            return {"trend": self.trend}
        return {"contrast": [dict(self.arm), dict(self.versus)], "model": self.model}


@dataclass
class AnalysisSpec:
    primary: Comparison
    secondary: list[Comparison] = field(default_factory=list)
    pool: dict = field(default_factory=dict)
    alpha: float = 0.05
    margin: float = 1.0
    metric: str = "val_top1"
    target_difference: Optional[float] = None
    pilot_sd: Optional[float] = None
    pilot_sweep: Optional[str] = None
    pilot_tracking_uri: Optional[str] = None

    def to_dict(self) -> dict:
        """The section as YAML-ready data (what ``analysis.yaml`` beside a report holds)."""
        d: dict[str, Any] = {"primary": self.primary.to_dict(), "secondary": [c.to_dict() for c in self.secondary],
                             "pool": dict(self.pool), "alpha": self.alpha, "margin": self.margin,
                             "metric": self.metric}
        if self.target_difference is not None:
            d["target_difference"] = self.target_difference
        if self.pilot_sweep is not None:
            d["pilot_sd"] = {"sweep": self.pilot_sweep, **({"tracking_uri": self.pilot_tracking_uri}
                                                            if self.pilot_tracking_uri else {})}
        elif self.pilot_sd is not None:
            d["pilot_sd"] = self.pilot_sd
        return d


def arm_text(arm: dict) -> str:
    """``{init.scheme: dog, init.on_ratio: 0.5}`` -> ``dog on_ratio=0.5``; ``{init.scheme: kaiming}`` -> ``kaiming``."""
    parts = [str(arm["init.scheme"])] if "init.scheme" in arm else []
    parts += [f"{k.rsplit('.', 1)[-1]}={_g(v)}" for k, v in arm.items() if k != "init.scheme"]
    return " ".join(parts) or "(every trial)"


def amount(v: float, unit: str) -> str:
    """``1 point``, ``0.5 points``, ``2 points`` (``unit`` is `` points`` or empty)."""
    return f"{v:g}{unit[:-1] if unit.endswith('s') and v == 1 else unit}"


def _g(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- parsing


def _number(raw: dict, k: str, default: Any, *, positive: bool = True, below: Optional[float] = None) -> Any:
    v = raw.get(k, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"analysis.{k}", v, "must be a finite number")
    if positive and v <= 0:
        raise ConfigError(f"analysis.{k}", v, "must be > 0")
    if below is not None and v >= below:
        raise ConfigError(f"analysis.{k}", v, f"must be < {below:g}")
    return float(v)


def parse_analysis(raw: Any, *, params: Optional[Sequence], base_value: Optional[Callable[[str], Any]], metric: str,
                   metrics: Sequence[str]) -> AnalysisSpec:
    """Parse and check the ``analysis`` section against the sweep's space (``params``: its
    :class:`~echos_core.sweep.spec.Param` list; ``base_value(key)``: a key's value when the space leaves it alone).
    ``params=None``: check the form only."""
    if not isinstance(raw, dict):
        raise ConfigError("analysis", raw, "must be a mapping with at least `primary`")
    for k, v in raw.items():
        if k not in _KEYS:
            raise ConfigError(f"analysis.{k}", v, f"unknown key; allowed in analysis: {', '.join(_KEYS)}")
    space = _Space(params, base_value)
    pool = raw.get("pool", {}) or {}
    if not isinstance(pool, dict):
        raise ConfigError("analysis.pool", pool, "must be a mapping of config keys to values (the trials the pooled "
                                          "model is fitted over), e.g. {init.scheme: dog}")
    space.check_arm("analysis.pool", pool)
    if "primary" not in raw:
        raise ConfigError("analysis.primary", None, "is required: {contrast: [ARM, ARM]} or {trend: KEY}")
    primary = _comparison("analysis.primary", raw["primary"], space, pool)
    sec_raw = raw.get("secondary", []) or []
    if not isinstance(sec_raw, list):
        raise ConfigError("analysis.secondary", sec_raw, "must be a list of comparisons")
    secondary = [_comparison(f"analysis.secondary[{i}]", c, space, pool) for i, c in enumerate(sec_raw)]
    seen = [primary.to_dict()]
    for i, c in enumerate(secondary):
        if c.to_dict() in seen:
            raise ConfigError(f"analysis.secondary[{i}]", c.describe(), "repeats an earlier comparison")
        seen.append(c.to_dict())

    alpha = _number(raw, "alpha", 0.05, below=0.5)
    margin = _number(raw, "margin", None)
    if margin is None:
        raise ConfigError("analysis.margin", None, "is required: the equivalence margin m in metric units "
                                            "(points for val_top1); differences inside ±m count as equivalent")
    an_metric = raw.get("metric", metric)
    if an_metric not in metrics:
        raise ConfigError("analysis.metric", an_metric, f"must be one of {', '.join(metrics)}")
    target = _number(raw, "target_difference", None)
    sd, sweep, uri = _pilot(raw.get("pilot_sd"))
    return AnalysisSpec(primary=primary, secondary=secondary, pool=dict(pool), alpha=alpha, margin=margin,
                        metric=an_metric, target_difference=target, pilot_sd=sd, pilot_sweep=sweep,
                        pilot_tracking_uri=uri)


def analysis_from_dict(raw: dict) -> AnalysisSpec:
    """An :class:`AnalysisSpec` from its :meth:`~AnalysisSpec.to_dict` form (``analysis.yaml`` beside a report),
    without a space to check the arms against (the report matches them against the trials)."""
    metric = raw.get("metric", "val_top1") if isinstance(raw, dict) else "val_top1"
    return parse_analysis(raw, params=None, base_value=None, metric=metric, metrics=(metric,))


def _pilot(v: Any) -> tuple[Optional[float], Optional[str], Optional[str]]:
    if v is None:
        return None, None, None
    if isinstance(v, dict):
        for k in v:
            if k not in ("sweep", "tracking_uri"):
                raise ConfigError(f"analysis.pilot_sd.{k}", v[k], "unknown key; allowed: sweep, tracking_uri")
        sweep, uri = v.get("sweep"), v.get("tracking_uri")
        if not isinstance(sweep, str) or not sweep:
            raise ConfigError("analysis.pilot_sd.sweep", sweep, "must name an earlier sweep in the MLflow store")
        if uri is not None and (not isinstance(uri, str) or not uri):
            raise ConfigError("analysis.pilot_sd.tracking_uri", uri, "must be a tracking URI")
        return None, sweep, uri
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError("analysis.pilot_sd", v, "must be a number > 0 (sd of a paired difference, metric units) or "
                                           "{sweep: NAME} to read it from an earlier sweep in MLflow")
    return float(v), None, None


def _comparison(where: str, raw: Any, space: "_Space", pool: dict) -> Comparison:
    if not isinstance(raw, dict):
        raise ConfigError(where, raw, "must be {contrast: [ARM, ARM], model: pooled|paired} or {trend: KEY}")
    kinds = [k for k in ("contrast", "trend") if k in raw]
    if len(kinds) != 1:
        raise ConfigError(where, raw, "must have exactly one of `contrast` or `trend`")
    allowed = ("contrast", "model") if kinds == ["contrast"] else ("trend",)
    for k, v in raw.items():
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", v, f"unknown key; allowed: {', '.join(allowed)}")
    if kinds == ["trend"]:
        key = raw["trend"]
        values = space.numeric_values(key) if isinstance(key, str) else None
        if space.known and (values is None or len(values) < 2) or not isinstance(key, str):
            raise ConfigError(f"{where}.trend", key,
                              "must be a config key the space varies over at least 2 numeric values")
        return Comparison(trend=key)
    pair = raw["contrast"]
    if not isinstance(pair, list) or len(pair) != 2:
        raise ConfigError(f"{where}.contrast", pair,
                          "must be a list of two arms, each a mapping of config keys to values")
    for i, arm in enumerate(pair):
        space.check_arm(f"{where}.contrast[{i}]", arm)
    if _same(pair[0], pair[1]):
        raise ConfigError(f"{where}.contrast", pair, "names the same arm twice")
    model = raw.get("model", "pooled")
    if model not in MODELS:
        raise ConfigError(f"{where}.model", model, f"must be one of {', '.join(MODELS)}")
    if model == "pooled":
        for i, arm in enumerate(pair):
            if not space.can_overlap(arm, pool):
                raise ConfigError(f"{where}.contrast[{i}]", arm, f"is outside analysis.pool {pool}: a pooled contrast "
                                                          "needs both arms in the pool (or use model: paired)")
    return Comparison(arm=dict(pair[0]), versus=dict(pair[1]), model=model)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), abs_tol=1e-12)
    return a == b


class _Space:
    """Which combinations of config values the sweep can produce (for checking declared arms)."""

    def __init__(self, params: Optional[Sequence], base_value: Optional[Callable[[str], Any]]):
        self.known = params is not None  # False: no space to check against, every arm is possible
        self.params, self.base_value = list(params or []), base_value

    def _param(self, key: str):
        return next((p for p in self.params if key in p.config_keys()), None)

    def check_arm(self, where: str, arm: Any) -> None:
        if not isinstance(arm, dict) or (not arm and not where.endswith("pool")):
            raise ConfigError(where, arm,
                              "an arm must be a mapping of config keys to values, e.g. {init.scheme: kaiming}")
        for k, v in arm.items():
            if not isinstance(k, str) or "." not in k:
                raise ConfigError(where, k, "arm keys must be dotted config keys such as init.on_ratio")
        if not self.can_overlap(arm, {}):
            raise ConfigError(where, arm, "no configuration of this sweep has these values: " + self._why(arm))

    def _options(self, p) -> Optional[list[dict]]:
        """Every combination of config values one param can set (None: a continuous range)."""
        if p.is_arm:
            return [dict(a) for a in p.arms.values()]
        if p.type in ("uniform", "loguniform"):
            return None
        return [{p.key: v} for v in p.probes()]

    def can_overlap(self, arm: dict, other: dict) -> bool:
        """Could one configuration match ``arm`` and ``other`` at once?"""
        want = dict(other)
        for k, v in arm.items():
            if k in want and not _eq(want[k], v):
                return False
            want[k] = v
        if not self.known:
            return True
        for p in self.params:
            keys = [k for k in want if k in p.config_keys()]
            if not keys:
                continue
            options = self._options(p)
            if options is None:
                if not all(isinstance(want[k], (int, float)) and p.low <= want[k] <= p.high for k in keys):
                    return False
                continue
            if not any(all(_eq(o.get(k, self.base_value(k)), want[k]) for k in keys) for o in options):
                return False
        free = [k for k in want if self._param(k) is None]
        return all(_eq(self.base_value(k), want[k]) for k in free)

    def _why(self, arm: dict) -> str:
        bits = []
        for k, v in arm.items():
            p = self._param(k)
            if p is None:
                bits.append(f"{k} is not searched and stays {self.base_value(k)!r}")
            else:
                opts = self._options(p)
                vals = ("a range" if opts is None else
                        ", ".join(dict.fromkeys(repr(o.get(k, self.base_value(k))) for o in opts)))
                bits.append(f"{k} takes {vals}")
        return "; ".join(bits)

    def numeric_values(self, key: str) -> Optional[list[float]]:
        if not self.known:
            return None
        p = self._param(key)
        if p is None:
            return None
        opts = self._options(p)
        if opts is None:
            return [p.low, p.high]
        vals = [o.get(key) for o in opts if key in o]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return None
        return sorted(set(float(v) for v in vals))

    def planned_cells(self, pool: dict) -> Optional[int]:
        """How many configurations of a grid fall in ``pool`` (None when the space is not enumerable)."""
        opts = [self._options(p) for p in self.params]
        if any(o is None for o in opts):
            return None
        n = 0
        for combo in itertools.product(*opts) if opts else [()]:
            cfg: dict = {}
            for o in combo:
                cfg.update(o)
            if all(_eq(cfg.get(k, self.base_value(k)), v) for k, v in pool.items()):
                n += 1
        return n


# --------------------------------------------------------------------------- power before launch


def power_lines(an: AnalysisSpec, *, seeds: int, params: Sequence, base_value: Callable[[str], Any],
                grid: bool, sd: Optional[float], sd_source: str) -> list[str]:
    """The declared analysis and its power table, as ``--dry-run`` prints them."""
    unit = " points" if an.metric.startswith("val_top") else ""
    lines = _declared_lines(an, unit)
    if sd is None:
        return lines + ["power: no pilot_sd in the analysis section: the power of this design is unknown "
                        "(give pilot_sd: NUMBER or pilot_sd: {sweep: NAME})"]
    power = _Power(an, sd, _Space(params, base_value), grid)
    return lines + power.table_lines(seeds, sd_source, unit) + power.verdict_lines(seeds, unit)


def _declared_lines(an: AnalysisSpec, unit: str) -> list[str]:
    lines = ["analysis (declared before the run):",
             f"  primary: {an.primary.describe()}"]
    if an.secondary:
        lines.append(f"  secondary ({len(an.secondary)}, Holm-adjusted as one family):")
        lines += [f"    {c.describe()}" for c in an.secondary]
    lines.append(f"  pool (pooled model): {', '.join(f'{k}={_g(v)}' for k, v in an.pool.items()) or 'every trial'}; alpha {an.alpha:g} "
                 f"(two-sided); equivalence margin ±{amount(an.margin, unit)}; metric {an.metric}")
    return lines


class _Power:
    """Minimum detectable differences (80% power) of the declared primary comparison, by seed count:
    paired t, the balanced pooled arm + seed model, or the trend's change over the range run."""

    def __init__(self, an: AnalysisSpec, sd: float, space: "_Space", grid: bool):
        self.an, self.sd = an, sd
        self.cells = space.planned_cells(an.pool) if grid else None
        self.pooled = (not an.primary.is_trend and an.primary.model == "pooled" and self.cells is not None
                       and self.cells > 2)
        self.trend_x = space.numeric_values(an.primary.trend) if an.primary.is_trend else None

    def paired(self, n: int) -> float:
        from ..report.design import min_detectable_difference

        return min_detectable_difference(self.sd, n, self.an.alpha)

    def pooled_mdd(self, n: int) -> float:  # balanced arm + seed model: se = sd / sqrt(n), df = (arms-1)(n-1)
        from ..report.design import POWER, detectable_difference

        return detectable_difference(self.sd / math.sqrt(n), (self.cells - 1) * (n - 1), self.an.alpha, POWER)

    def trend_mdd(self, n: int) -> float:  # change over the range run, slope with the seed block
        from ..report.design import POWER, detectable_difference

        xs = self.trend_x
        sxx = sum((x - sum(xs) / len(xs)) ** 2 for x in xs)
        se = (self.sd / math.sqrt(2)) / math.sqrt(n * sxx) * (max(xs) - min(xs))
        return detectable_difference(se, n * len(xs) - n - 1, self.an.alpha, POWER)

    def primary(self, n: int) -> float:
        return self.trend_mdd(n) if self.trend_x else self.pooled_mdd(n) if self.pooled else self.paired(n)

    def needed(self) -> tuple[Optional[int], Optional[int]]:
        """Seeds for the target difference: paired t, and the primary comparison as declared."""
        from ..report.design import seeds_needed

        target = self.an.target_difference
        if not target:
            return None, None
        return (seeds_needed(self.sd, target, self.an.alpha),
                next((n for n in range(2, 10_000) if self.primary(n) <= target), None))

    def table_lines(self, seeds: int, sd_source: str, unit: str) -> list[str]:
        from ..report.design import POWER

        lines = [f"power (paired sd {self.sd:g}{unit} from {sd_source}; {POWER:.0%} power, two-sided alpha "
                 f"{self.an.alpha:g}):",
                 "  minimum detectable difference" + (" (trend: change over the range run)" if self.trend_x else "")
                 + ":"]
        cols = (["seeds", "paired t"] + ([f"pooled, {self.cells} arms"] if self.pooled else [])
                + (["trend"] if self.trend_x else []))
        lines.append("  " + "  ".join(f"{c:>16s}" for c in cols))
        counts = sorted({seeds, 4, 8, 16, 32, 64} | {n for n in self.needed() if n})
        for n in [c for c in counts if c >= 2]:
            vals = ([self.paired(n)] + ([self.pooled_mdd(n)] if self.pooled else [])
                    + ([self.trend_mdd(n)] if self.trend_x else []))
            lines.append("  " + f"{n:16d}  " + "  ".join(f"{v:16.2f}" for v in vals)
                         + ("   <- this spec" if n == seeds else ""))
        return lines

    def verdict_lines(self, seeds: int, unit: str) -> list[str]:
        mdd, target = self.primary(seeds), self.an.target_difference
        if target is None:
            return [f"  primary at {seeds} seeds detects {mdd:.2f}{unit} (no target_difference declared)"]
        need, need_primary = self.needed()
        lines = [f"  target difference {amount(target, unit)}: {need} paired seeds (paired t), {need_primary} for "
                 f"the primary comparison as declared"]
        if mdd > target:
            lines.append(f"  UNDERPOWERED: the primary comparison detects {mdd:.2f}{unit} at {seeds} seeds (80% "
                         f"power), more than its target {amount(target, unit)}; a null result will read 'not "
                         f"resolved', not 'no effect'")
        else:
            lines.append(f"  powered: the primary comparison detects {mdd:.2f}{unit} <= target "
                         f"{amount(target, unit)} at {seeds} seeds")
        return lines


def resolve_pilot_sd(an: AnalysisSpec, tracking_uri: str) -> tuple[Optional[float], str]:
    """``(sd of a paired difference, where it came from)``: the number in the spec, or sqrt(2) x the residual sd of
    the pooled arm + seed model of an earlier sweep read from MLflow (its complete trials)."""
    if an.pilot_sweep is None:
        return an.pilot_sd, "the spec" if an.pilot_sd is not None else ""
    from ..report.design import pilot_sd
    from ..report.load import ReportError, load_sweep
    from ..report.stats import assign_arms, final_values
    from ..tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(an.pilot_tracking_uri or tracking_uri)
    try:
        runs = load_sweep(uri, an.pilot_sweep, metric=an.metric, sweep_id="all")
    except ReportError as e:
        raise ConfigError("analysis.pilot_sd.sweep", an.pilot_sweep, f"cannot be read: {e}") from None
    used = final_values(assign_arms(runs.trials), an.metric)
    sd = pilot_sd(used.rename(columns={f"final_{an.metric}": "y"})[["arm", "seed", "y"]]) if len(used) else math.nan
    if not (sd > 0):
        raise ConfigError("analysis.pilot_sd.sweep", an.pilot_sweep, f"has no arm + seed replication to estimate an sd "
                                                              f"from ({len(used)} complete trials)")
    return sd, f"sweep {an.pilot_sweep!r} ({len(used)} complete trials, pooled arm + seed model residual x sqrt 2)"
