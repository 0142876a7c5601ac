"""Figures of a sweep report (PNG, matplotlib through a bare ``Figure``: no pyplot, no display).

* :func:`plot_metric_vs`: the final value against one config key (on_ratio, gamma, kernel size):
  every seed a jittered point, per value the mean and its 95% t-interval; arms without that key
  (the baselines, for on_ratio and gamma) are horizontal bands, mean +- 95% CI;
* :func:`plot_learning_curves`: the metric per epoch, mean +- sd over seeds per arm (complete
  trials), ASHA-stopped trials as thin dotted lines;
* :func:`plot_cluster_fractions`: On / Off / other fractions of the depthwise kernels per epoch.

Only complete trials (:func:`echos_core.report.stats.final_values`) give final values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .stats import _fmt, _is_number, _masked, _sort_value, arm_keys, arm_order, assign_arms, final_values, t_interval

__all__ = ["plot_metric_vs", "plot_learning_curves", "plot_cluster_fractions", "has_cluster_fractions", "metric_label"]

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f"]
_FRACTIONS = ("on", "off", "other")


def _figure(width: float, height: float, ncols: int = 1, integer_x: bool = False):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    if integer_x:  # epochs
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def metric_label(metric: str) -> str:
    return f"{metric} (%)" if metric.startswith("val_top") else metric


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_metric_vs(trials: pd.DataFrame, x_keys: Sequence[str], path: str | Path, metric: str = "val_top1",
                   title: str | None = None, xlim: tuple[float, float] | None = None) -> Path:
    """Final ``metric`` against the config key(s) ``x_keys`` (several keys: one categorical axis of their tuples)."""
    trials = trials if "arm" in trials.columns else assign_arms(trials)
    keys = trials.attrs.get("arm_keys") or arm_keys(trials)
    series_of = assign_arms(trials, [k for k in keys if k not in x_keys])["arm"]
    used = final_values(trials, metric)
    col = f"final_{metric}"
    xs = {i: tuple(_masked(row, k) for k in x_keys) for i, row in trials.iterrows()}
    with_x = [i for i in trials.index if any(v is not None for v in xs[i])]
    numeric = len(x_keys) == 1 and all(_is_number(xs[i][0]) for i in with_x)
    levels = sorted({xs[i] for i in with_x}, key=lambda t: tuple(_sort_value(v) for v in t))
    pos = {lv: (float(lv[0]) if numeric else float(j)) for j, lv in enumerate(levels)}
    span = (max(pos.values()) - min(pos.values())) if len(pos) > 1 else 1.0
    jitter = 0.008 * span if numeric else 0.04
    rng = np.random.default_rng(0)

    fig, (ax,) = _figure(7.5, 4.6)
    all_series = list(dict.fromkeys(series_of[with_x]))
    dodge = (0.025 * span if numeric else 0.12) if len(all_series) > 1 else 0.0  # series side by side
    colour_i = 0
    for si, series in enumerate(all_series):
        idx = [i for i in with_x if series_of[i] == series]
        c = _colour(colour_i)
        colour_i += 1
        shift = (si - (len(all_series) - 1) / 2) * dodge
        means = []
        for lv in levels:
            rows = used.loc[[i for i in idx if xs[i] == lv and i in used.index]]
            if rows.empty:
                continue
            vals = rows[col].astype(float).to_numpy()
            x0 = pos[lv] + shift
            ax.scatter(x0 + rng.uniform(-jitter, jitter, len(vals)), vals, s=14, color=c, alpha=0.45, linewidths=0)
            n, mean, _, lo, hi = t_interval(vals)
            means.append((x0, mean))
            if n >= 2:
                ax.errorbar([x0], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=c, capsize=4, ms=5)
            else:
                ax.plot([x0], [mean], "o", color=c, ms=5, mfc="white")
        if means:
            ax.plot(*zip(*means), "-", color=c, lw=1.2, label=f"{series}: mean ± 95% CI")
    for arm in arm_order(trials):
        idx = [i for i in trials.index if trials.at[i, "arm"] == arm]
        if any(i in with_x for i in idx):
            continue
        vals = used.loc[used["arm"] == arm, col].astype(float).to_numpy()
        if len(vals) == 0:
            continue
        c = _colour(colour_i)
        colour_i += 1
        n, mean, _, lo, hi = t_interval(vals)
        if n >= 2:
            ax.axhspan(lo, hi, color=c, alpha=0.15, lw=0)
        ax.axhline(mean, color=c, ls="--", lw=1.2, label=f"{arm}: mean{' ± 95% CI' if n >= 2 else ''} (n={n})")
    if not numeric or (len(levels) <= 12 and xlim is None):
        ax.set_xticks([pos[lv] for lv in levels], [", ".join(_fmt(v) for v in lv) for lv in levels])
    if xlim is not None:
        ax.set_xlim(*xlim)
    elif len(levels) == 1:
        ax.set_xlim(min(pos.values()) - 0.5, max(pos.values()) + 0.5)
    ax.set_xlabel(" / ".join(x_keys))
    ax.set_ylabel(f"final {metric_label(metric)}")
    ax.set_title(title or f"final {metric} vs {' / '.join(x_keys)} (complete trials; points = seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(path))


def _curve_matrix(curves: pd.DataFrame, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    c = curves[(curves["key"] == key) & curves["run_id"].isin(list(run_ids))]
    return c.pivot_table(index="epoch", columns="run_id", values="value", aggfunc="last")


def plot_learning_curves(trials: pd.DataFrame, curves: pd.DataFrame, path: str | Path,
                         metric: str = "val_top1") -> Path:
    """``metric`` per epoch: mean +- sd over the complete trials of each arm; ASHA-stopped trials dotted."""
    trials = trials if "arm" in trials.columns else assign_arms(trials)
    used = final_values(trials, metric)
    fig, (ax,) = _figure(7.5, 4.6, integer_x=True)
    for i, arm in enumerate(arm_order(trials)):
        c = _colour(i)
        m = _curve_matrix(curves, used.loc[used["arm"] == arm, "run_id"], metric)
        if not m.empty:
            mean, sd = m.mean(axis=1), m.std(axis=1, ddof=1)
            ax.plot(m.index, mean, "-", color=c, lw=1.5, label=f"{arm} (n={m.shape[1]})")
            if m.shape[1] >= 2:
                ax.fill_between(m.index, mean - sd, mean + sd, color=c, alpha=0.15, lw=0)
        stopped = trials[(trials["arm"] == arm) & trials["asha_stopped"].astype(bool)]
        s = _curve_matrix(curves, stopped["run_id"], metric)
        for j, run in enumerate(s.columns):
            ax.plot(s.index, s[run], ":", marker="x", ms=5, color=c, lw=0.9, alpha=0.7,
                    label=f"{arm}: stopped by ASHA" if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} per epoch: mean ± sd over seeds (complete trials)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(path))


def has_cluster_fractions(curves: pd.DataFrame) -> bool:
    return bool(curves["key"].isin([f"kernels/{f}_fraction" for f in _FRACTIONS]).any())


def plot_cluster_fractions(trials: pd.DataFrame, curves: pd.DataFrame, path: str | Path,
                           metric: str = "val_top1") -> Path:
    """Fractions of depthwise kernels labelled On / Off / other per epoch: mean over the complete trials of each arm."""
    trials = trials if "arm" in trials.columns else assign_arms(trials)
    used = final_values(trials, metric)
    if used.empty:  # nothing complete: draw what ran
        used = trials
    fig, axes = _figure(12, 4.0, ncols=3, integer_x=True)
    for ax, frac in zip(axes, _FRACTIONS):
        for i, arm in enumerate(arm_order(trials)):
            m = _curve_matrix(curves, used.loc[used["arm"] == arm, "run_id"], f"kernels/{frac}_fraction")
            if m.empty:
                continue
            mean = m.mean(axis=1)
            ax.plot(m.index, mean, "-", color=_colour(i), lw=1.4, label=f"{arm} (n={m.shape[1]})")
            if m.shape[1] >= 2:
                sd = m.std(axis=1, ddof=1)
                ax.fill_between(m.index, mean - sd, mean + sd, color=_colour(i), alpha=0.12, lw=0)
        ax.set_title(f"kernels labelled {frac}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of depthwise kernels (mean ± sd)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="best")
    return _save(fig, Path(path))
