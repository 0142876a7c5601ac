"""A report's declared analysis: the primary result first, then the Holm-adjusted secondaries, worded by rule.

The rules (METHOD.md, "How a claim is made"):

* **better / worse** only when the comparison's test rejects 0 at ``alpha``: the primary unadjusted (its 95%
  interval excludes 0), each secondary after Holm adjustment over the secondary family;
* **equivalent within ±m** only when both one-sided tests reject (TOST p < alpha, Holm-adjusted for
  secondaries);
* otherwise **not resolved at n = …**, with the difference the design could have detected at 80% power.
  Non-significance is never "no effect" nor "at least as good".

The estimates come from the analysis declared for each comparison: a paired t-test over the seeds both arms
completed, or the pooled arm + seed OLS model over the trials in ``analysis.pool``
(:class:`~echos_core.report.design.PooledModel`).  A trend is the seed-blocked slope over the pool, reported as
the change across the range that was run (slope x (max - min)); nothing is said between or beyond grid points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from ..sweep.analysis_spec import AnalysisSpec, Comparison, amount as _amount, arm_text
from .design import PooledModel, min_detectable_difference, pooled_trend, tost_paired
from .load import ReportError
from .stats import _is_number, _masked, _paired, _relevant, arm_order, final_values, holm, lower_is_better

__all__ = ["DeclaredResult", "DeclaredAnalysis", "run_declared", "word", "RESULT_COLUMNS"]

RESULT_COLUMNS = ["role", "comparison", "model", "arm", "versus", "n", "estimate", "ci_low", "ci_high", "p",
                  "p_adj", "p_tost", "p_tost_adj", "detectable", "verdict"]


@dataclass
class DeclaredResult:
    role: str  # primary | secondary
    comparison: Comparison
    label: str  # what is compared, in words
    model: str  # "paired t-test" | "pooled arm + seed model" | "seed-blocked linear trend"
    arm: str
    versus: str
    n: int  # seeds (pairs, or seed blocks of the pooled model)
    estimate: float
    ci_low: float
    ci_high: float
    p: float
    p_tost: float
    detectable: float  # at 80% power, from this comparison's own se and df
    p_adj: float = math.nan  # Holm (secondaries); the primary's own p
    p_tost_adj: float = math.nan
    verdict: str = ""


@dataclass
class DeclaredAnalysis:
    spec: AnalysisSpec
    results: list[DeclaredResult]
    pooled: Optional[PooledModel]
    pooled_contrasts: pd.DataFrame  # every pooled arm against the primary's reference arm (descriptive table)
    pool_arms: list[str]

    @property
    def primary(self) -> DeclaredResult:
        return self.results[0]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"role": r.role, "comparison": r.label, "model": r.model, "arm": r.arm,
                              "versus": r.versus, "n": r.n, "estimate": r.estimate, "ci_low": r.ci_low,
                              "ci_high": r.ci_high, "p": r.p, "p_adj": r.p_adj, "p_tost": r.p_tost,
                              "p_tost_adj": r.p_tost_adj, "detectable": r.detectable, "verdict": r.verdict}
                             for r in self.results], columns=RESULT_COLUMNS)


# --------------------------------------------------------------------------- wording


def word(r: DeclaredResult, margin: float, alpha: float, metric: str, unit: str = " points", d: int = 2) -> str:
    """The verdict of one comparison by the rules: better / worse / equivalent within ±m / not resolved at n."""
    if r.n < 2 or not math.isfinite(r.estimate):
        return f"no estimate (n = {r.n})"
    if math.isfinite(r.p_adj) and r.p_adj < alpha:
        if r.comparison.is_trend:
            return "rises" if r.estimate > 0 else "falls"
        better = (r.estimate > 0) != lower_is_better(metric)
        return "better" if better else "worse"
    if math.isfinite(r.p_tost_adj) and r.p_tost_adj < alpha:
        return f"equivalent within ±{_amount(margin, unit)}"
    det = f"{r.detectable:.{d}f}{unit}" if math.isfinite(r.detectable) else "unknown"
    return f"not resolved at n = {r.n} (detectable at 80% power: {det})"


def sentence(r: DeclaredResult, margin: float, alpha: float, metric: str, unit: str = " points", d: int = 2) -> str:
    """One sentence for ``report.md``: the verdict, the estimate, its interval, p and the analysis used."""
    ci = f"[{r.ci_low:+.{d}f}, {r.ci_high:+.{d}f}]"
    adj = "" if r.role == "primary" else f", Holm p {_p(r.p_adj)}"
    stats_ = (f"{r.estimate:+.{d}f}{unit}, 95% CI {ci}, p {_p(r.p)}{adj}, TOST p {_p(r.p_tost_adj)} "
              f"for ±{_amount(margin, unit)}; {r.model}, n = {r.n} seeds")
    v = r.verdict
    if r.comparison.is_trend:
        if v in ("rises", "falls"):
            return (f"The seed-blocked linear fit of final {metric} over {r.versus} {v}: change over that range "
                    f"{stats_}. It describes the grid points run, not values between or beyond them.")
        return f"The linear trend over {r.versus}: {v}; change over that range {stats_}."
    if v in ("better", "worse"):
        return f"`{r.arm}` is {v} than `{r.versus}`: {stats_}."
    if v.startswith("equivalent"):
        return f"`{r.arm}` and `{r.versus}` are {v}: {stats_}."
    return f"`{r.arm}` vs `{r.versus}`: {v}; {stats_}."


def _pv(v: Any) -> str:
    """A p-value for a table cell."""
    if v is None or not math.isfinite(v):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _p(v: Any) -> str:
    """A p-value in a sentence: ``= 0.070`` or ``< 0.001``."""
    s = _pv(v)
    return s.replace("<", "< ") if s.startswith("<") else f"= {s}"


# --------------------------------------------------------------------------- estimation


def _matches(row: pd.Series, arm: dict) -> bool:
    for k, v in arm.items():
        if not _relevant(k, row.get("init.scheme")):
            return False
        got = _masked(row, k)
        if _is_number(v) and _is_number(got):
            if not math.isclose(float(v), float(got), abs_tol=1e-9):
                return False
        elif got != v and str(got) != str(v):
            return False
    return True


def _arm_label(trials: pd.DataFrame, arm: dict, where: str) -> str:
    labels = sorted({row["arm"] for _, row in trials.iterrows() if _matches(row, arm)})
    if len(labels) != 1:
        raise ReportError(f"{where} {arm_text(arm)}: matches {len(labels)} arms of the sweep"
                          f"{' (' + ', '.join(labels) + ')' if labels else ''}; it must pick out exactly one")
    return labels[0]


def run_declared(trials: pd.DataFrame, an: AnalysisSpec, metric: Optional[str] = None) -> DeclaredAnalysis:
    """Estimate every declared comparison on ``trials`` (with the ``arm`` column), adjust and word them."""
    metric = an.metric if metric is None else metric
    used = final_values(trials, metric)
    col = f"final_{metric}"
    pool_rows = used[[_matches(row, an.pool) for _, row in used.iterrows()]] if an.pool else used
    pool_frame = pd.DataFrame({"arm": pool_rows["arm"], "seed": pool_rows["seed"], "y": pool_rows[col]})
    pooled = PooledModel(pool_frame) if len(pool_frame) else None
    unit = " points" if metric.startswith("val_top") else ""

    results = []
    for role, comps in (("primary", [an.primary]), ("secondary", an.secondary)):
        for c in comps:
            results.append(_estimate(role, c, trials, used, pool_rows, pooled, an, col))
    # Holm over the secondary family; the primary stands alone
    sec = [r for r in results if r.role == "secondary"]
    for attr, src in (("p_adj", "p"), ("p_tost_adj", "p_tost")):
        adj = holm([getattr(r, src) for r in sec]) if sec else []
        for r, a in zip(sec, adj):
            setattr(r, attr, float(a))
        setattr(results[0], attr, getattr(results[0], src))
    for r in results:
        r.verdict = word(r, an.margin, an.alpha, metric, unit)

    pool_arms = [a for a in arm_order(trials) if a in set(pool_frame["arm"])]
    contrasts = _pooled_table(pooled, pool_arms, results[0], an.margin)
    return DeclaredAnalysis(spec=an, results=results, pooled=pooled, pooled_contrasts=contrasts, pool_arms=pool_arms)


def _estimate(role: str, c: Comparison, trials: pd.DataFrame, used: pd.DataFrame, pool_rows: pd.DataFrame,
              pooled: Optional[PooledModel], an: AnalysisSpec, col: str) -> DeclaredResult:
    where = f"analysis.{role}"
    if c.is_trend:
        rows = pool_rows[[_relevant(c.trend, s) for s in pool_rows.get("init.scheme", [None] * len(pool_rows))]]
        rows = rows[rows[c.trend].apply(_is_number)] if c.trend in rows else rows.iloc[0:0]
        xs = rows[c.trend].astype(float) if len(rows) else pd.Series(dtype=float)
        if xs.nunique() < 2:
            raise ReportError(f"{where} trend over {c.trend}: fewer than 2 values of it among the complete trials "
                              "of the pool")
        span = float(xs.max() - xs.min())
        slope, _ = pooled_trend(pd.DataFrame({"x": xs, "seed": rows["seed"], "y": rows[col]}))
        k = span  # report the change over the range run
        return DeclaredResult(role=role, comparison=c, label=c.describe(), model="seed-blocked linear trend",
                              arm=c.trend, versus=f"{c.trend} {xs.min():g} to {xs.max():g}", n=slope.n,
                              estimate=slope.estimate * k, ci_low=slope.ci_low * k, ci_high=slope.ci_high * k,
                              p=slope.p, p_tost=slope.tost(an.margin / k) if k > 0 else math.nan,
                              detectable=slope.detectable(an.alpha) * k)
    a = _arm_label(trials, c.arm, f"{where} contrast")
    b = _arm_label(trials, c.versus, f"{where} contrast")
    if c.model == "pooled":
        if pooled is None or a not in pooled.arms or b not in pooled.arms:
            raise ReportError(f"{where} contrast {a} - {b}: both arms must have complete trials in analysis.pool")
        e = pooled.contrast(a, b)
        return DeclaredResult(role=role, comparison=c, label=c.describe(), model="pooled arm + seed model",
                              arm=a, versus=b, n=e.n, estimate=e.estimate, ci_low=e.ci_low, ci_high=e.ci_high,
                              p=e.p, p_tost=e.tost(an.margin), detectable=e.detectable(an.alpha))
    ua, ub = used[used["arm"] == a], used[used["arm"] == b]
    pr = _paired(ua, ub, col)
    m = ua[["seed", col]].merge(ub[["seed", col]], on="seed", suffixes=("_a", "_b"))
    return DeclaredResult(role=role, comparison=c, label=c.describe(), model="paired t-test", arm=a, versus=b,
                          n=pr["n_pairs"], estimate=pr["mean_diff"], ci_low=pr["ci_low"], ci_high=pr["ci_high"],
                          p=pr["p"], p_tost=tost_paired(m[f"{col}_a"], m[f"{col}_b"], an.margin),
                          detectable=min_detectable_difference(pr["sd_diff"], pr["n_pairs"], an.alpha))


def _pooled_table(pooled: Optional[PooledModel], arms: list[str], primary: DeclaredResult,
                  margin: float) -> pd.DataFrame:
    """Every arm of the pool minus one reference arm (the primary's ``versus`` when it is in the pool)."""
    cols = ["arm", "reference", "n", "estimate", "ci_low", "ci_high", "p", "p_tost", "detectable"]
    if pooled is None or len(arms) < 2:
        return pd.DataFrame(columns=cols)
    ref = primary.versus if primary.versus in arms else arms[0]
    rows = []
    for a in arms:
        if a == ref:
            continue
        e = pooled.contrast(a, ref)
        rows.append({"arm": a, "reference": ref, "n": e.n, "estimate": e.estimate, "ci_low": e.ci_low,
                     "ci_high": e.ci_high, "p": e.p, "p_tost": e.tost(margin), "detectable": e.detectable()})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- report.md


def render_declared(da: DeclaredAnalysis, metric: str) -> list[str]:
    """The report's first section: the primary result, the secondaries, the pooled model and the rules."""
    an = da.spec
    d = 2 if metric.startswith("val_top") else 4
    unit = " points" if metric.startswith("val_top") else ""
    p = da.primary
    L = ["## Primary result (declared in the spec's `analysis:` section)", ""]
    L.append(f"**{sentence(p, an.margin, an.alpha, metric, unit, d)}**")
    L.append("")
    if da.pooled is not None:
        L.append(f"Pooled model: OLS `{metric} ~ C(arm) + C(seed)` over the complete trials of "
                 f"{', '.join(f'`{a}`' for a in da.pool_arms)} ({da.pooled.n} trials, {da.pooled.n_seeds} seeds, "
                 f"residual sd {da.pooled.resid_sd:.{d}f}{unit}, {da.pooled.df_resid:g} residual df).")
        L.append("")
    if an.secondary:
        L.append(f"### Secondary comparisons ({len(an.secondary)}, Holm-adjusted as one family)")
        L.append("")
        L += [f"- {sentence(r, an.margin, an.alpha, metric, unit, d)}" for r in da.results[1:]]
        L.append("")
    if not da.pooled_contrasts.empty:
        ref = da.pooled_contrasts["reference"].iloc[0]
        L.append(f"### Pooled model: every arm of the pool against `{ref}`")
        L.append("")
        L.append("Descriptive unless declared above (no adjustment here): estimate, 95% CI, p, TOST p for "
                 f"±{_amount(an.margin, unit)}, and the difference detectable at 80% power.")
        L.append("")
        L.append("| arm | vs | estimate | 95% CI | p | TOST p | detectable |")
        L.append("|---|---|---|---|---|---|---|")
        for _, r in da.pooled_contrasts.iterrows():
            L.append(f"| `{r.arm}` | `{r.reference}` | {r.estimate:+.{d}f} | [{r.ci_low:+.{d}f}, {r.ci_high:+.{d}f}] "
                     f"| {_pv(r.p)} | {_pv(r.p_tost)} "
                     f"| {r.detectable:.{d}f} |")
        L.append("")
    L.append(f"Rules: \"better\" / \"worse\" only when the test rejects 0 at alpha {an.alpha:g} (the primary "
             "unadjusted, secondaries after Holm); \"equivalent within ±m\" only when both one-sided tests reject "
             f"(TOST, m = {_amount(an.margin, unit)}); otherwise \"not resolved at n = …\" with the difference the "
             "comparison could have detected at 80% power. No ranking is made of what these do not separate.")
    L.append("")
    return L
