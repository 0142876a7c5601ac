"""Study design statistics: power, TOST, the pooled arm + seed model and its trend, against hand calculations."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from echos_core.report.design import (PooledModel, min_detectable_difference, pooled_trend, power_table,
                                      seeds_needed, tost_from_estimate, tost_paired)


def _paired_power(diff: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Exact power of a two-sided paired t-test, by hand from the noncentral t."""
    df, nc = n - 1, diff / (sd / math.sqrt(n))
    t = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(t, df, nc) + sps.nct.cdf(-t, df, nc)


@pytest.mark.parametrize("n,sd", [(4, 1.9), (4, 2.0), (10, 1.7), (30, 2.1)])
def test_minimum_detectable_difference_has_80_percent_power(n, sd):
    mdd = min_detectable_difference(sd, n, alpha=0.05)
    assert _paired_power(mdd, sd, n) == pytest.approx(0.8, abs=1e-6)
    # and it is near the textbook (t[0.975] + t[0.8]) sd / sqrt(n), closer as n grows
    approx = (sps.t.ppf(0.975, n - 1) + sps.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert mdd == pytest.approx(approx, rel=0.03 if n >= 10 else 0.08)


def test_four_seeds_detect_about_four_points_at_the_first_study_sd():
    assert min_detectable_difference(1.9, 4) == pytest.approx(4.04, abs=0.01)
    assert min_detectable_difference(1.9, 30) == pytest.approx(1.01, abs=0.01)
    assert math.isnan(min_detectable_difference(1.9, 1))


@pytest.mark.parametrize("sd,diff", [(1.9, 1.0), (2.0, 0.5), (1.7, 1.0), (1.0, 3.0)])
def test_seeds_needed_is_the_smallest_n_with_80_percent_power(sd, diff):
    n = seeds_needed(sd, diff)
    assert _paired_power(diff, sd, n) >= 0.8
    if n > 2:
        assert _paired_power(diff, sd, n - 1) < 0.8


def test_seeds_needed_matches_the_audit_and_rejects_nonsense():
    # the audit: sd 1.7-2.1 needs 26-37 seeds for 1 point (25 by the exact noncentral t at 1.7), ~100 for 0.5
    assert (seeds_needed(1.7, 1.0), seeds_needed(2.1, 1.0)) == (25, 37)
    assert seeds_needed(1.7, 0.5) == 93 and seeds_needed(2.1, 0.5) == 141
    with pytest.raises(ValueError):
        seeds_needed(0.0, 1.0)


def test_power_table_marks_which_seed_counts_reach_the_target():
    t = power_table(1.9, [4, 8, 40], 0.05, target=2.0)
    assert t["reaches_target"].tolist() == [False, False, True]
    assert t["mdd"].is_monotonic_decreasing


def test_tost_equivalent_when_the_difference_is_far_below_the_margin():
    rng = np.random.default_rng(0)
    base = rng.normal(80, 2, 12)
    close = base + rng.normal(0.05, 0.2, 12)  # differ by ~0.05 points, margin 1
    far = base + rng.normal(3.0, 0.2, 12)  # differ by ~3 points
    assert tost_paired(close, base, margin=1.0) < 0.05
    assert tost_paired(far, base, margin=1.0) > 0.5
    assert math.isnan(tost_paired([1.0], [1.0], 1.0))


def test_tost_from_estimate_is_the_larger_one_sided_p():
    est, se, df, m = 0.2, 0.3, 10, 1.0
    p = tost_from_estimate(est, se, df, m)
    assert p == pytest.approx(max(sps.t.sf((est + m) / se, df), sps.t.cdf((est - m) / se, df)))
    assert p < 0.05 and tost_from_estimate(2.0, 0.3, 10, 1.0) > 0.99


# A 3-arm x 3-seed table: arm a, b, c; seeds 0, 1, 2.
_Y = np.array([[80.0, 82.0, 81.0],   # arm a
               [84.0, 85.5, 85.0],   # arm b
               [79.0, 82.5, 80.0]])  # arm c


def _table(y=_Y, arms=("a", "b", "c")):
    return pd.DataFrame([{"arm": arm, "seed": s, "y": y[i, s]} for i, arm in enumerate(arms) for s in range(y.shape[1])])


def test_pooled_contrast_equals_the_hand_calculation():
    fit = PooledModel(_table())
    # balanced two-way additive model: contrast = difference of arm means; residual = y - row - col + grand
    resid = _Y - _Y.mean(1, keepdims=True) - _Y.mean(0, keepdims=True) + _Y.mean()
    df = (3 - 1) * (3 - 1)
    s2 = (resid ** 2).sum() / df
    se = math.sqrt(2 * s2 / 3)
    est = _Y[1].mean() - _Y[0].mean()
    half = sps.t.ppf(0.975, df) * se
    c = fit.contrast("b", "a")
    assert c.estimate == pytest.approx(est)
    assert c.se == pytest.approx(se)
    assert c.df == df
    assert (c.ci_low, c.ci_high) == pytest.approx((est - half, est + half))
    assert c.p == pytest.approx(2 * sps.t.sf(abs(est / se), df))
    assert fit.contrast("a", "b").estimate == pytest.approx(-est)
    assert fit.contrast("c", "b").estimate == pytest.approx(_Y[2].mean() - _Y[1].mean())
    assert fit.paired_sd == pytest.approx(math.sqrt(2 * s2))
    with pytest.raises(KeyError, match="arm 'z'"):
        fit.contrast("z", "a")


def test_pooled_contrast_with_labels_patsy_would_choke_on():
    fit = PooledModel(_table(arms=("dog on_ratio=0", "dog [x]", "kaiming")))
    assert fit.contrast("dog [x]", "dog on_ratio=0").estimate == pytest.approx(_Y[1].mean() - _Y[0].mean())


def test_pooled_estimates_do_not_depend_on_the_order_trials_were_read_in():
    """The same trials read from MLflow or from a report's CSV, in another order, give the same numbers to the
    last bit; a difference of means on a rounding tie (here exactly 0.325) prints the same either way."""
    rng = np.random.default_rng(0)
    arms = ("dog on_ratio=0.5", "dog on_ratio=0.25", "dog on_ratio=1", "kaiming")
    y = np.round(rng.normal(80, 2, size=(4, 4)), 2)
    y[1] = y[0] + np.array([0.31, 0.32, 0.33, 0.34])  # arm 1 - arm 0 = 0.325 in every seed's mean
    rows = pd.DataFrame([{"arm": a, "seed": s, "y": y[i, s], "x": i} for i, a in enumerate(arms) for s in range(4)])
    first = PooledModel(rows).contrast(arms[1], arms[0])
    firsts = pooled_trend(rows)
    for k in range(5):
        shuffled = rows.sample(frac=1, random_state=k).reset_index(drop=True)
        again = PooledModel(shuffled).contrast(arms[1], arms[0])
        assert (again.estimate, again.ci_low, again.ci_high, again.p) == (first.estimate, first.ci_low,
                                                                          first.ci_high, first.p)
        assert pooled_trend(shuffled)[0].estimate == firsts[0].estimate
    assert first.estimate == 0.325 and f"{first.estimate:+.2f}" == "+0.33"


def test_pooled_trend_slope_with_seed_block_equals_hand_calculation():
    x = np.array([0.0, 0.5, 1.0])
    frame = pd.DataFrame([{"x": x[i], "seed": s, "y": _Y[i, s]} for i in range(3) for s in range(3)])
    slope, curv = pooled_trend(frame)
    yc = _Y - _Y.mean(0, keepdims=True)  # remove the seed means
    xc = x - x.mean()
    b = (xc[:, None] * yc).sum() / (3 * (xc ** 2).sum())
    assert slope.estimate == pytest.approx(b)
    resid = yc - (_Y.mean(1) - _Y.mean())[:, None] * 0 - b * xc[:, None]
    df = 9 - 1 - 2 - 1  # intercept, slope, two seed effects
    se = math.sqrt((resid ** 2).sum() / df / (3 * (xc ** 2).sum()))
    assert slope.df == df and slope.se == pytest.approx(se)
    # three x values: the quadratic passes through the three arm means, curvature by hand
    m = _Y.mean(1)
    assert curv.estimate == pytest.approx((m[0] - 2 * m[1] + m[2]) / (2 * 0.5 ** 2))
