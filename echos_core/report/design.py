"""Study design: power before a sweep, equivalence tests, and the pooled (arm + seed) model.

* **Power** (:func:`detectable_difference`, :func:`min_detectable_difference`, :func:`seeds_needed`):
  statsmodels' :class:`~statsmodels.stats.power.TTestPower` (the exact noncentral-t power of a
  one-sample / paired t-test).  For a t statistic with standard error ``se`` and ``df`` degrees of
  freedom the smallest true difference found with probability ``power`` at two-sided ``alpha`` is
  ``es * sqrt(df + 1) * se`` where ``es`` is TTestPower's effect size for ``nobs = df + 1``; for ``n``
  paired seeds (``se = sd / sqrt(n)``, ``df = n - 1``) that is ``es * sd``, about
  ``(t[1-alpha/2, n-1] + t[power, n-1]) sd / sqrt(n)``.
* **Equivalence** (:func:`tost_paired`, :func:`tost_from_estimate`): two one-sided tests against
  ``-margin`` and ``+margin``; "equivalent within +-margin" only when both reject (p_TOST < alpha).
  Paired data go through statsmodels' ``ttost_paired``.
* **Pooled model** (:class:`PooledModel`): ordinary least squares ``y ~ C(arm) + C(seed)``
  (statsmodels formula API) over every (arm, seed) cell: the seed block removes the shared seed
  effect from every contrast, and the residual sd is estimated from all arms at once, so a contrast
  has more degrees of freedom than one paired t-test.  :meth:`PooledModel.contrast` is ``arm a - arm b``
  with its t-interval and p (``OLSResults.t_test``).
* **Trend** (:func:`pooled_trend`): ``y ~ x + C(seed)`` over a numeric parameter (the slope, per unit
  of x, with the seed block), and ``y ~ x + I(x**2) + C(seed)`` for the curvature.  A statement about
  the range run, nothing beyond or between the grid points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["POWER", "detectable_difference", "min_detectable_difference", "seeds_needed", "power_table",
           "tost_paired", "tost_from_estimate", "Estimate", "PooledModel", "pooled_trend", "pilot_sd"]

POWER = 0.8  # the power every "detectable difference" in echos is quoted at


def _ttest_power():
    from statsmodels.stats.power import TTestPower

    return TTestPower()


def detectable_difference(se: float, df: float, alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest true difference a two-sided t-test with standard error ``se`` and ``df`` degrees of freedom
    detects with probability ``power`` at level ``alpha``.  NaN when ``df < 1`` or ``se`` is not finite."""
    if not (df >= 1 and math.isfinite(se) and se > 0):
        return math.nan
    nobs = df + 1
    es = _ttest_power().solve_power(effect_size=None, nobs=nobs, alpha=alpha, power=power, alternative="two-sided")
    return abs(float(np.ravel(es)[0])) * math.sqrt(nobs) * se  # the solver may return the negative root


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The minimum detectable paired difference for ``n`` paired seeds whose differences have sd ``sd``."""
    if n < 2:
        return math.nan
    return detectable_difference(sd / math.sqrt(n), n - 1, alpha, power)


def seeds_needed(sd: float, difference: float, alpha: float = 0.05, power: float = POWER) -> int:
    """Paired seeds needed to detect a true ``difference`` (same units as ``sd``) with ``power`` at ``alpha``."""
    if not (sd > 0 and difference > 0):
        raise ValueError(f"sd ({sd}) and difference ({difference}) must be > 0")
    n = _ttest_power().solve_power(effect_size=difference / sd, nobs=None, alpha=alpha, power=power,
                                   alternative="two-sided")
    return max(2, int(math.ceil(float(n) - 1e-9)))


def power_table(sd: float, seeds: Sequence[int], alpha: float, target: Optional[float],
                power: float = POWER) -> pd.DataFrame:
    """Minimum detectable paired difference for each number of seeds in ``seeds`` (and, with a ``target``,
    whether it reaches it).  Columns: seeds, mdd, reaches_target."""
    rows = []
    for n in seeds:
        mdd = min_detectable_difference(sd, n, alpha, power)
        rows.append({"seeds": n, "mdd": mdd, "reaches_target": (target is not None and mdd <= target)})
    return pd.DataFrame(rows, columns=["seeds", "mdd", "reaches_target"])


# --------------------------------------------------------------------------- equivalence


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """p-value of the two one-sided tests that the mean paired difference ``a - b`` lies in ``(-margin, margin)``
    (statsmodels ``ttost_paired``): the larger of the two one-sided p-values.  NaN for fewer than 2 pairs or
    no spread."""
    from statsmodels.stats.weightstats import ttost_paired

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or not np.std(x - y) > 0:
        return math.nan
    p, _, _ = ttost_paired(x, y, -margin, margin)
    return float(p)


def tost_from_estimate(estimate: float, se: float, df: float, margin: float) -> float:
    """TOST p-value from an estimate, its standard error and df (e.g. a pooled-model contrast)."""
    if not (df >= 1 and math.isfinite(se) and se > 0):
        return math.nan
    p_low = sps.t.sf((estimate + margin) / se, df)  # H0: difference <= -margin
    p_high = sps.t.cdf((estimate - margin) / se, df)  # H0: difference >= +margin
    return float(max(p_low, p_high))


# --------------------------------------------------------------------------- pooled model


@dataclass
class Estimate:
    """One estimated difference (a contrast or a slope) with its t-interval."""

    estimate: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    n: int  # seeds (blocks) the estimate rests on

    def detectable(self, alpha: float = 0.05, power: float = POWER) -> float:
        return detectable_difference(self.se, self.df, alpha, power)

    def tost(self, margin: float) -> float:
        return tost_from_estimate(self.estimate, self.se, self.df, margin)


class PooledModel:
    """OLS ``y ~ C(arm) + C(seed)`` over a table with columns ``arm``, ``seed`` and ``y`` (one row per cell)."""

    def __init__(self, frame: pd.DataFrame, level: float = 0.95):
        import statsmodels.formula.api as smf

        if frame.empty:
            raise ValueError("the pooled model needs at least one trial")
        self.level = level
        self.arms = list(dict.fromkeys(frame["arm"]))
        # arm labels may hold characters patsy dislikes; codes and rows in a fixed order, so that the fit (to
        # the last bit) does not depend on the order the trials were read in (MLflow, or a report's CSV)
        codes = {a: f"a{i}" for i, a in enumerate(sorted(self.arms, key=str))}
        data = pd.DataFrame({"y": frame["y"].astype(float).to_numpy(), "arm": frame["arm"].map(codes).to_numpy(),
                             "seed": frame["seed"].astype(str).to_numpy()})
        data = data.sort_values(["arm", "seed", "y"], kind="stable").reset_index(drop=True)
        self._codes = codes
        self.n_seeds = data["seed"].nunique()
        self.n = len(data)
        formula = "y ~ C(arm)" + (" + C(seed)" if self.n_seeds > 1 else "")
        self.fit = smf.ols(formula, data).fit()
        self.df_resid = float(self.fit.df_resid)
        self.resid_sd = math.sqrt(self.fit.scale) if self.df_resid > 0 else math.nan

    def contrast(self, a: str, b: str) -> Estimate:
        """``arm a - arm b`` with the seed block; t-interval at the model's level, two-sided p."""
        for arm in (a, b):
            if arm not in self._codes:
                raise KeyError(f"arm {arm!r} is not in the pooled model (arms: {', '.join(self.arms)})")
        names = list(self.fit.params.index)
        L = np.zeros(len(names))
        for arm, sign in ((a, 1.0), (b, -1.0)):
            col = f"C(arm)[T.{self._codes[arm]}]"
            if col in names:  # the reference arm has no column
                L[names.index(col)] += sign
        return _estimate(self.fit, L, self.level, n=self.n_seeds)

    @property
    def paired_sd(self) -> float:
        """The sd of a paired difference this model implies: sqrt(2) x residual sd."""
        return math.sqrt(2) * self.resid_sd


def _estimate(fit, L: np.ndarray, level: float, n: int) -> Estimate:
    df = float(fit.df_resid)
    if df < 1:
        est = round(float(L @ fit.params.to_numpy()), 10)
        return Estimate(est, math.nan, df, math.nan, math.nan, math.nan, math.nan, n)
    res = fit.t_test(L)
    # to 10 decimals: a difference of means of accuracies often lies exactly on a rounding tie (0.325),
    # which float noise of the 15th digit would otherwise print one way or the other
    est, se = round(float(np.ravel(res.effect)[0]), 10), float(np.ravel(res.sd)[0])
    lo, hi = (round(float(v), 10) for v in np.ravel(res.conf_int(alpha=1 - level)))
    return Estimate(est, se, df, lo, hi, float(np.ravel(res.tvalue)[0]), float(res.pvalue), n)


def pooled_trend(frame: pd.DataFrame, level: float = 0.95) -> tuple[Estimate, Optional[Estimate]]:
    """Slope of ``y`` on numeric ``x`` with the seed block, and the curvature (x² coefficient) of the
    quadratic fit when x has at least 3 values (else None).  ``frame``: columns x, seed, y."""
    import statsmodels.formula.api as smf

    data = pd.DataFrame({"y": frame["y"].astype(float).to_numpy(), "x": frame["x"].astype(float).to_numpy(),
                         "seed": frame["seed"].astype(str).to_numpy()})
    data = data.sort_values(["x", "seed", "y"], kind="stable").reset_index(drop=True)  # (as in PooledModel)
    block = " + C(seed)" if data["seed"].nunique() > 1 else ""
    n = data["seed"].nunique()
    lin = smf.ols("y ~ x" + block, data).fit()
    L = (np.array(lin.params.index) == "x").astype(float)
    slope = _estimate(lin, L, level, n)
    curv = None
    if data["x"].nunique() >= 3:
        quad = smf.ols("y ~ x + I(x ** 2)" + block, data).fit()
        curv = _estimate(quad, (np.array(quad.params.index) == "I(x ** 2)").astype(float), level, n)
    return slope, curv


def pilot_sd(frame: pd.DataFrame) -> float:
    """The sd of a paired difference estimated from an earlier study (columns arm, seed, y): sqrt(2) times
    the residual sd of its pooled arm + seed model.  NaN when it has no residual degrees of freedom."""
    return PooledModel(frame).paired_sd
