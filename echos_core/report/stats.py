"""The statistics of a sweep report: arms, per-arm intervals, paired differences, trend, Holm.

Everything here is a plain function of the trials table (:func:`echos_core.report.load.load_sweep`):
one row per trial with the dotted config keys as columns, ``seed``, ``complete`` and
``final_<metric>``.  Definitions:

* **arm**: a trial's configuration minus its seed, keeping only the keys that vary across the
  sweep and matter for its init scheme (``init.on_ratio`` is no part of a ``kaiming`` arm even
  when the search sampled it; :func:`echos_core.registry.applicable_keys`).  Bookkeeping keys (threads, folders, MLflow,
  the ``arm.<name>`` label param a sweep adds for MLflow's compare view) never make an arm.
  Label: ``dog on_ratio=0.25``, ``kaiming``, ``dog on_ratio=0.5 kernel_size=7``.
* **final value**: the metric at the trial's last epoch, for *complete* trials only (ran every
  epoch of ``train.epochs``; not stopped by ASHA, not failed).  One trial per (arm, seed): a
  repeat of a seed re-runs the same init and data order, so it is no new evidence; the newest wins.
* **arm summary**: n, mean, sd (ddof 1), 95% t-interval ``mean +- t(0.975, n-1) sd / sqrt(n)``.
* **paired difference** of arm A against baseline arm B: ``d_s = A_s - B_s`` over the seeds s both
  completed, where B has the same values of every non-init arm key (same model, data, training);
  mean, sd, 95% t-interval of the mean of d, paired t-test p (``scipy.stats.ttest_rel``).
* **Holm**: step-down Holm-Bonferroni adjusted p-values over a family of comparisons (statsmodels).
* **on_ratio trend**: ordinary least squares of the final value on ``init.on_ratio`` over the
  DoG trials of one context (``scipy.stats.linregress``; slope = change from all-Off to all-On),
  and a quadratic fit whose curvature says whether there is an interior optimum.  Trials are
  treated as independent (seed effects go into the residual), which makes the intervals wider,
  not narrower, than a seed-paired analysis.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..registry import INIT_SCHEMES, applicable_keys, report_rank

__all__ = [
    "BOOKKEEPING_KEYS", "CONFIDENCE", "PAIR_COLUMNS",
    "arm_keys", "assign_arms", "arm_order", "final_values", "t_interval", "arm_summary",
    "paired_differences", "on_ratio_contrasts", "holm", "on_ratio_trend", "lower_is_better",
]

CONFIDENCE = 0.95
# Keys that change where or how fast a run goes, not what it computes.
BOOKKEEPING_KEYS = frozenset({"seed", "output_dir", "run_name", "train.threads", "data.num_workers", "data.root",
                              "data.download", "train.checkpoint_every", "train.keep_checkpoints"})


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


# --------------------------------------------------------------------------- arms


def _relevant(key: str, scheme: Any) -> bool:
    if not key.startswith("init.") or key == "init.scheme":
        return True
    if scheme not in INIT_SCHEMES:  # a scheme this process does not know: keep every init.* key
        return True
    return key in applicable_keys(scheme)


def _masked(row: pd.Series, key: str) -> Any:
    v = row.get(key)
    if not _relevant(key, row.get("init.scheme")):
        return None
    return None if isinstance(v, float) and math.isnan(v) else v


def arm_keys(trials: pd.DataFrame) -> list[str]:
    """Config keys that take more than one value among the trials whose init scheme reads them.

    ``init.scheme`` first, then the other init.* keys, then the rest in column order.
    """
    keys = []
    for key in trials.columns:
        if "." not in key or key in BOOKKEEPING_KEYS or key.startswith(("mlflow.", "arm.", "final_", "best_")):
            continue  # not a config key (run id, metrics, tags, the sweep's own arm label), or bookkeeping
        values = {_hashable(_masked(row, key)) for _, row in trials.iterrows()
                  if _relevant(key, row.get("init.scheme"))}
        if len(values) > 1:
            keys.append(key)
    return sorted(keys, key=lambda k: (k != "init.scheme", not k.startswith("init."), list(trials.columns).index(k)))


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if _is_number(v):
        return str(int(v)) if isinstance(v, numbers.Integral) else f"{float(v):g}"
    return str(v)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def assign_arms(trials: pd.DataFrame, keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """A copy of ``trials`` with an ``arm`` label per trial (``dog on_ratio=0.25``, ``kaiming``)."""
    keys = list(arm_keys(trials) if keys is None else keys)
    short = _short_names(keys)
    out = trials.copy()
    labels = []
    for _, row in trials.iterrows():
        scheme = row.get("init.scheme")
        parts = [str(scheme) if scheme is not None else "?"]
        for key in keys:
            if key != "init.scheme" and _relevant(key, scheme):
                parts.append(f"{short[key]}={_fmt(_masked(row, key))}")
        labels.append(" ".join(parts))
    out["arm"] = labels
    out.attrs["arm_keys"] = keys
    return out


def _ensure_arms(trials: pd.DataFrame) -> pd.DataFrame:
    return trials if "arm" in trials.columns else assign_arms(trials)


def _is_number(v: Any) -> bool:
    """int or float, numpy's included; not bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _sort_value(v: Any) -> tuple:
    if v is None:
        return (0, 0)
    if _is_number(v):
        return (1, float(v))
    return (2, str(v))


def arm_order(trials: pd.DataFrame) -> list[str]:
    """Arm labels in reading order: DoG arms (by their values), other schemes, then kaiming and default."""
    trials = _ensure_arms(trials)
    keys = trials.attrs.get("arm_keys") or arm_keys(trials)
    seen: dict[str, tuple] = {}
    for _, row in trials.iterrows():
        if row["arm"] not in seen:
            scheme = row.get("init.scheme")
            seen[row["arm"]] = (report_rank(scheme), str(scheme),
                                tuple(_sort_value(_masked(row, k)) for k in keys if k != "init.scheme"))
    return sorted(seen, key=lambda a: seen[a])


# --------------------------------------------------------------------------- final values and intervals


def final_values(trials: pd.DataFrame, metric: str = "val_top1") -> pd.DataFrame:
    """The trials that count for final-value claims: complete, finite, one per (arm, seed) (the newest)."""
    trials = _ensure_arms(trials)
    col = f"final_{metric}"
    if col not in trials.columns:
        return trials.iloc[0:0]
    ok = trials[trials["complete"].astype(bool) & trials[col].apply(_finite)]
    if "start_time" in ok.columns:
        ok = ok.sort_values("start_time", kind="stable")
    out = ok.drop_duplicates(subset=["arm", "seed"], keep="last")
    out.attrs.update(trials.attrs)
    return out


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def t_interval(values: Iterable[float], level: float = CONFIDENCE) -> tuple[int, float, float, float, float]:
    """``(n, mean, sd, low, high)``: the t-interval of the mean; sd and the interval are NaN for n < 2."""
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return n, mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    if sd == 0:  # every value equal: the interval is that value (scipy would divide by zero)
        return n, mean, sd, mean, mean
    ci = sps.ttest_1samp(x, 0.0).confidence_interval(level)
    return n, mean, sd, float(ci.low), float(ci.high)


def arm_summary(trials: pd.DataFrame, metric: str = "val_top1") -> pd.DataFrame:
    """One row per arm: trials run, stopped by ASHA, incomplete, repeats, and n / mean / sd / 95% CI of the final value.

    Columns: arm, scheme, n_trials, n_asha_stopped, n_incomplete (failed or unfinished, not ASHA),
    n_repeats (extra trials of a seed already counted), n, mean, sd, ci_low, ci_high, min, max, seeds.
    """
    trials = _ensure_arms(trials)
    used = final_values(trials, metric)
    col = f"final_{metric}"
    rows = []
    for arm in arm_order(trials):
        all_t = trials[trials["arm"] == arm]
        u = used[used["arm"] == arm].sort_values("seed")
        vals = u[col].astype(float).tolist() if len(u) else []
        n, mean, sd, lo, hi = t_interval(vals)
        stopped = int(all_t["asha_stopped"].astype(bool).sum())
        complete = int(all_t["complete"].astype(bool).sum())
        rows.append({
            "arm": arm, "scheme": all_t["init.scheme"].iloc[0] if "init.scheme" in all_t else None,
            "n_trials": len(all_t), "n_asha_stopped": stopped, "n_incomplete": len(all_t) - stopped - complete,
            "n_repeats": complete - n, "n": n, "mean": mean, "sd": sd, "ci_low": lo, "ci_high": hi,
            "min": min(vals) if vals else math.nan, "max": max(vals) if vals else math.nan,
            "seeds": " ".join(str(s) for s in u["seed"].tolist()),
        })
    return pd.DataFrame(rows, columns=["arm", "scheme", "n_trials", "n_asha_stopped", "n_incomplete", "n_repeats",
                                       "n", "mean", "sd", "ci_low", "ci_high", "min", "max", "seeds"])


# --------------------------------------------------------------------------- paired differences

PAIR_COLUMNS = ["arm", "baseline", "n_pairs", "mean_diff", "sd_diff", "ci_low", "ci_high", "t", "p", "seeds",
                 "context"]


def _paired(a: pd.DataFrame, b: pd.DataFrame, col: str) -> dict:
    m = a[["seed", col]].merge(b[["seed", col]], on="seed", suffixes=("_a", "_b")).sort_values("seed")
    d = (m[f"{col}_a"].astype(float) - m[f"{col}_b"].astype(float)).to_numpy()
    n, mean, sd, lo, hi = t_interval(d)
    t_stat = p = math.nan
    if n >= 2 and sd > 0:
        res = sps.ttest_rel(m[f"{col}_a"].astype(float), m[f"{col}_b"].astype(float))
        t_stat, p = float(res.statistic), float(res.pvalue)
        ci = res.confidence_interval(CONFIDENCE)
        lo, hi = float(ci.low), float(ci.high)
    return {"n_pairs": n, "mean_diff": mean, "sd_diff": sd, "ci_low": lo, "ci_high": hi, "t": t_stat, "p": p,
            "seeds": " ".join(str(s) for s in m["seed"].tolist())}


def _context(row: pd.Series, keys: Sequence[str]) -> tuple:
    return tuple(_hashable(_masked(row, k)) for k in keys)


def _context_label(row: pd.Series, keys: Sequence[str]) -> str:
    short = _short_names(keys)
    return " ".join(f"{short[k]}={_fmt(_masked(row, k))}" for k in keys) or "all"


def paired_differences(trials: pd.DataFrame, baseline: str, metric: str = "val_top1",
                       scheme: str = "dog") -> pd.DataFrame:
    """Every ``scheme`` arm minus every ``baseline``-scheme arm with the same non-init config, paired by seed.

    One row per (arm, baseline arm): n_pairs, mean_diff, sd_diff, ci_low, ci_high (95% t-interval of
    the mean difference), t, p (paired t-test), seeds, context (the shared non-init config).
    An arm with no baseline arm of the same context gets no row.
    """
    trials = _ensure_arms(trials)
    keys = trials.attrs.get("arm_keys") or arm_keys(trials)
    ctx_keys = [k for k in keys if not k.startswith("init.")]
    used = final_values(trials, metric)
    col = f"final_{metric}"
    first = {arm: grp.iloc[0] for arm, grp in trials.groupby("arm", sort=False)}
    order = arm_order(trials)
    arms = [a for a in order if first[a].get("init.scheme") == scheme]
    bases = [a for a in order if first[a].get("init.scheme") == baseline]
    rows = []
    for a in arms:
        for b in bases:
            if _context(first[a], ctx_keys) != _context(first[b], ctx_keys):
                continue
            rows.append({"arm": a, "baseline": b, **_paired(used[used["arm"] == a], used[used["arm"] == b], col),
                         "context": _context_label(first[a], ctx_keys)})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def on_ratio_contrasts(trials: pd.DataFrame, reference: float = 0.5, metric: str = "val_top1") -> pd.DataFrame:
    """Every DoG arm minus the DoG arm that differs from it only in ``init.on_ratio == reference``, paired by seed.

    Same columns as :func:`paired_differences`.  Empty when on_ratio does not vary or ``reference`` was not run.
    """
    trials = _ensure_arms(trials)
    keys = trials.attrs.get("arm_keys") or arm_keys(trials)
    if "init.on_ratio" not in keys:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    ctx_keys = [k for k in keys if k != "init.on_ratio"]
    label_keys = [k for k in ctx_keys if k != "init.scheme"]
    used = final_values(trials, metric)
    col = f"final_{metric}"
    first = {arm: grp.iloc[0] for arm, grp in trials.groupby("arm", sort=False)}
    dog = [a for a in arm_order(trials) if first[a].get("init.scheme") == "dog"]
    rows = []
    for a in dog:
        r = first[a].get("init.on_ratio")
        if not _finite(r) or math.isclose(float(r), reference):
            continue
        refs = [b for b in dog if _finite(first[b].get("init.on_ratio"))
                and math.isclose(float(first[b]["init.on_ratio"]), reference)
                and _context(first[b], ctx_keys) == _context(first[a], ctx_keys)]
        for b in refs:
            rows.append({"arm": a, "baseline": b, **_paired(used[used["arm"] == a], used[used["arm"] == b], col),
                         "context": _context_label(first[a], label_keys)})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests(method="holm")``: step-down, monotone,
    capped at 1).  NaN stays NaN and is not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


# --------------------------------------------------------------------------- trend across on_ratio

_TREND_COLUMNS = ["context", "n", "n_ratios", "slope", "slope_se", "slope_ci_low", "slope_ci_high", "slope_p",
                  "r2", "curvature", "curvature_ci_low", "curvature_ci_high", "curvature_p", "optimum"]


def on_ratio_trend(trials: pd.DataFrame, metric: str = "val_top1") -> pd.DataFrame:
    """Per DoG context (the DoG arm keys other than on_ratio), regressions of the final value on on_ratio.

    * linear: ``y = a + slope * on_ratio`` (scipy.stats.linregress); slope CI uses t(n-2);
    * quadratic: ``y = a + b r + curvature r^2`` (OLS); curvature CI and p use t(n-3); ``optimum`` is
      the vertex ``-b / (2 curvature)`` when the parabola opens the right way (down for accuracy, up for
      a loss) and the vertex lies inside the on_ratio range run, else NaN.  A point estimate: whether it
      differs from 0.5 is judged by the paired contrasts against on_ratio=0.5, not by this number.

    Contexts with fewer than 2 distinct on_ratios or 3 trials get no row; the quadratic needs 3 ratios and 4 trials.
    """
    trials = _ensure_arms(trials)
    keys = trials.attrs.get("arm_keys") or arm_keys(trials)
    used = final_values(trials, metric)
    used = used[used["init.scheme"] == "dog"] if "init.scheme" in used else used.iloc[0:0]
    ctx_keys = [k for k in keys if k not in ("init.on_ratio", "init.scheme")]
    col = f"final_{metric}"
    rows = []
    groups: dict[tuple, list] = {}
    for _, row in used.iterrows():
        groups.setdefault(_context(row, ctx_keys), []).append(row)
    for _, rs in groups.items():
        x = np.array([float(r["init.on_ratio"]) for r in rs])
        y = np.array([float(r[col]) for r in rs])
        n, k = len(x), len(np.unique(x))
        if k < 2 or n < 3:
            continue
        lr = sps.linregress(x, y)
        half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 2)) * lr.stderr
        row = {"context": _context_label(rs[0], ctx_keys), "n": n, "n_ratios": k, "slope": lr.slope,
               "slope_se": lr.stderr, "slope_ci_low": lr.slope - half, "slope_ci_high": lr.slope + half,
               "slope_p": lr.pvalue, "r2": lr.rvalue ** 2, "curvature": math.nan, "curvature_ci_low": math.nan,
               "curvature_ci_high": math.nan, "curvature_p": math.nan, "optimum": math.nan}
        if k >= 3 and n >= 4:
            row.update(_quadratic(x, y, lower_is_better(metric)))
        rows.append(row)
    return pd.DataFrame(rows, columns=_TREND_COLUMNS)


def _quadratic(x: np.ndarray, y: np.ndarray, minimise: bool) -> dict:
    # coefficients highest power first: (curvature, slope, intercept); cov scaled by residual variance / (n - 3)
    beta, cov = np.polyfit(x, y, 2, cov="unscaled")
    n = len(x)
    resid = y - np.polyval(beta, x)
    cov = cov * float(resid @ resid) / (n - 3)
    c, se = float(beta[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    tcrit = float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 3))
    p = float(2 * sps.t.sf(abs(c / se), n - 3)) if se > 0 else math.nan
    optimum = math.nan
    if (c > 0) if minimise else (c < 0):
        v = -float(beta[1]) / (2 * c)  # the vertex
        if x.min() <= v <= x.max():
            optimum = v
    return {"curvature": c, "curvature_ci_low": c - tcrit * se, "curvature_ci_high": c + tcrit * se,
            "curvature_p": p, "optimum": optimum}
