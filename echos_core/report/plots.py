"""Figures of a sweep report (PNG, matplotlib through a bare ``Figure``: no pyplot, no display).

* :func:`plot_metric_vs`: the final value against one config key (on_ratio, gamma, kernel size):
  every seed a jittered point, per value the mean and its 95% t-interval; arms without that key
  (the baselines, for on_ratio and gamma) get their own place right of the axis' values, with every
  seed drawn, and a dashed line (mean) over a band (95% CI) across the plot;
* :func:`plot_learning_curves`: the metric per epoch, every complete trial a thin line (one per seed)
  and the mean over seeds a thick one, per arm; ASHA-stopped trials as thin dotted lines;
* :func:`plot_cluster_fractions`: On / Off / other fractions of the depthwise kernels per epoch;
* :func:`plot_forest`: a forest plot of differences with their 95% intervals, the primary comparison
  highlighted and the equivalence margin drawn.

Each ``plot_*`` saves the figure its ``figure_*`` twin builds (tests read the artists of the latter).
Legends sit outside the axes, never over the data.  Only complete trials
(:func:`echos_core.report.stats.final_values`) give final values.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .stats import _fmt, _is_number, _masked, _sort_value, arm_keys, arm_order, assign_arms, final_values, t_interval

__all__ = ["plot_metric_vs", "plot_learning_curves", "plot_cluster_fractions", "plot_forest", "figure_metric_vs",
           "figure_learning_curves", "figure_cluster_fractions", "figure_forest", "has_cluster_fractions",
           "metric_label"]

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


def _legend_outside(ax) -> None:
    """The legend right of the axes (constrained layout makes room), never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_metric_vs(trials: pd.DataFrame, x_keys: Sequence[str], path: str | Path, metric: str = "val_top1",
                   title: str | None = None, xlim: tuple[float, float] | None = None) -> Path:
    """Final ``metric`` against the config key(s) ``x_keys`` (several keys: one categorical axis of their tuples)."""
    return _save(figure_metric_vs(trials, x_keys, metric, title, xlim), Path(path))


@dataclass
class _Axis:
    """Where figure_metric_vs puts things: each x level's position, the jitter of seeds, the rng."""

    pos: dict
    span: float
    numeric: bool
    jitter: float
    rng: np.random.Generator


def figure_metric_vs(trials: pd.DataFrame, x_keys: Sequence[str], metric: str = "val_top1",
                     title: str | None = None, xlim: tuple[float, float] | None = None):
    """The figure of :func:`plot_metric_vs`."""
    trials = trials if "arm" in trials.columns else assign_arms(trials)
    keys = trials.attrs.get("arm_keys") or arm_keys(trials)
    series_of = assign_arms(trials, [k for k in keys if k not in x_keys])["arm"]
    used = final_values(trials, metric)
    xs = {i: tuple(_masked(row, k) for k in x_keys) for i, row in trials.iterrows()}
    with_x = [i for i in trials.index if any(v is not None for v in xs[i])]
    numeric = len(x_keys) == 1 and all(_is_number(xs[i][0]) for i in with_x)
    levels = sorted({xs[i] for i in with_x}, key=lambda t: tuple(_sort_value(v) for v in t))
    pos = {lv: (float(lv[0]) if numeric else float(j)) for j, lv in enumerate(levels)}
    span = (max(pos.values()) - min(pos.values())) if len(pos) > 1 else 1.0
    axis = _Axis(pos, span, numeric, 0.008 * span if numeric else 0.04, np.random.default_rng(0))

    fig, (ax,) = _figure(9.5, 4.6)
    all_series = list(dict.fromkeys(series_of[with_x]))
    dodge = (0.025 * span if numeric else 0.12) if len(all_series) > 1 else 0.0  # series side by side
    for si, series in enumerate(all_series):
        idx = [i for i in with_x if series_of[i] == series]
        shift = (si - (len(all_series) - 1) / 2) * dodge
        _draw_series(ax, axis, series, [(lv, [i for i in idx if xs[i] == lv]) for lv in levels], used, metric,
                     shift, _colour(si))
    extra_ticks, step = _draw_arms_without_x(ax, axis, trials, with_x, used, metric, len(all_series))
    ticks = [(pos[lv], ", ".join(_fmt(v) for v in lv)) for lv in levels]
    if numeric and (len(levels) > 12 or (xlim is not None and not extra_ticks)):
        ticks = []  # matplotlib's own numeric ticks
    if ticks or extra_ticks:
        ax.set_xticks([t for t, _ in ticks + extra_ticks], [lab for _, lab in ticks + extra_ticks])
    if xlim is not None:
        ax.set_xlim(xlim[0], max(xlim[1], extra_ticks[-1][0] + step / 2) if extra_ticks else xlim[1])
    elif len(levels) == 1 and not extra_ticks:
        ax.set_xlim(min(pos.values()) - 0.5, max(pos.values()) + 0.5)
    ax.set_xlabel(" / ".join(x_keys))
    ax.set_ylabel(f"final {metric_label(metric)}")
    ax.set_title(title or f"final {metric} vs {' / '.join(x_keys)} (complete trials; points = seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


def _draw_series(ax, axis: _Axis, series: str, at_levels: list, used: pd.DataFrame, metric: str, shift: float,
                 c) -> None:
    """One series: every seed as a point at each x level, the mean with its 95% CI, the means joined."""
    col, means = f"final_{metric}", []
    for lv, idx in at_levels:
        rows = used.loc[[i for i in idx if i in used.index]]
        if rows.empty:
            continue
        vals = rows[col].astype(float).to_numpy()
        x0 = axis.pos[lv] + shift
        ax.scatter(x0 + axis.rng.uniform(-axis.jitter, axis.jitter, len(vals)), vals, s=14, color=c, alpha=0.45,
                   linewidths=0)
        n, mean, _, lo, hi = t_interval(vals)
        means.append((x0, mean))
        if n >= 2:
            ax.errorbar([x0], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=c, capsize=4, ms=5)
        else:
            ax.plot([x0], [mean], "o", color=c, ms=5, mfc="white")
    if means:
        ax.plot(*zip(*means), "-", color=c, lw=1.2, label=f"{series}: mean ± 95% CI")


def _draw_arms_without_x(ax, axis: _Axis, trials: pd.DataFrame, with_x: list, used: pd.DataFrame, metric: str,
                         colour_i: int) -> tuple[list[tuple[float, str]], float]:
    """Arms without the x key (baselines): their own place right of the x values, every seed drawn, and their
    mean (± 95% CI) as a band across the plot.  Returns their ticks and the spacing between them."""
    col = f"final_{metric}"
    right = max(axis.pos.values()) if axis.pos else 0.0
    step = (0.2 * axis.span) if axis.numeric else 1.0
    extra_ticks: list[tuple[float, str]] = []
    for arm in arm_order(trials):
        idx = [i for i in trials.index if trials.at[i, "arm"] == arm]
        if any(i in with_x for i in idx):
            continue
        vals = used.loc[used["arm"] == arm, col].astype(float).to_numpy()
        if len(vals) == 0:
            continue
        c = _colour(colour_i)
        colour_i += 1
        x0 = right + step * (len(extra_ticks) + 1)
        extra_ticks.append((x0, arm))
        n, mean, _, lo, hi = t_interval(vals)
        if n >= 2:
            ax.axhspan(lo, hi, color=c, alpha=0.12, lw=0)
        ax.axhline(mean, color=c, ls="--", lw=1.0, label=f"{arm}: mean{' ± 95% CI' if n >= 2 else ''} (n={n})")
        ax.scatter(x0 + axis.rng.uniform(-axis.jitter, axis.jitter, len(vals)), vals, s=14, color=c, alpha=0.6,
                   linewidths=0)
        if n >= 2:
            ax.errorbar([x0], [mean], yerr=[[mean - lo], [hi - mean]], fmt="s", color=c, capsize=4, ms=5)
    return extra_ticks, step


def _curve_matrix(curves: pd.DataFrame, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    c = curves[(curves["key"] == key) & curves["run_id"].isin(list(run_ids))]
    return c.pivot_table(index="epoch", columns="run_id", values="value", aggfunc="last")


def plot_learning_curves(trials: pd.DataFrame, curves: pd.DataFrame, path: str | Path,
                         metric: str = "val_top1") -> Path:
    """``metric`` per epoch: every complete trial (seed) a thin line, the mean over seeds thick; ASHA-stopped dotted."""
    return _save(figure_learning_curves(trials, curves, metric), Path(path))


def figure_learning_curves(trials: pd.DataFrame, curves: pd.DataFrame, metric: str = "val_top1"):
    """The figure of :func:`plot_learning_curves`."""
    trials = trials if "arm" in trials.columns else assign_arms(trials)
    used = final_values(trials, metric)
    fig, (ax,) = _figure(9.5, 4.6, integer_x=True)
    for i, arm in enumerate(arm_order(trials)):
        c = _colour(i)
        m = _curve_matrix(curves, used.loc[used["arm"] == arm, "run_id"], metric)
        if not m.empty:
            for run in m.columns:  # every seed
                ax.plot(m.index, m[run], "-", color=c, lw=0.7, alpha=0.35)
            ax.plot(m.index, m.mean(axis=1), "-", color=c, lw=2.0, label=f"{arm}: mean of {m.shape[1]} seeds (thin: each)")
        stopped = trials[(trials["arm"] == arm) & trials["asha_stopped"].astype(bool)]
        s = _curve_matrix(curves, stopped["run_id"], metric)
        for j, run in enumerate(s.columns):
            ax.plot(s.index, s[run], ":", marker="x", ms=5, color=c, lw=0.9, alpha=0.7,
                    label=f"{arm}: stopped by ASHA" if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} per epoch: every seed (thin) and the mean over seeds (thick), complete trials", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


def has_cluster_fractions(curves: pd.DataFrame) -> bool:
    return bool(curves["key"].isin([f"kernels/{f}_fraction" for f in _FRACTIONS]).any())


def plot_cluster_fractions(trials: pd.DataFrame, curves: pd.DataFrame, path: str | Path,
                           metric: str = "val_top1") -> Path:
    """Fractions of depthwise kernels labelled On / Off / other per epoch: mean over the complete trials of each arm."""
    return _save(figure_cluster_fractions(trials, curves, metric), Path(path))


def figure_cluster_fractions(trials: pd.DataFrame, curves: pd.DataFrame, metric: str = "val_top1"):
    """The figure of :func:`plot_cluster_fractions`."""
    trials = trials if "arm" in trials.columns else assign_arms(trials)
    used = final_values(trials, metric)
    if used.empty:  # nothing complete: draw what ran
        used = trials
    fig, axes = _figure(14, 4.0, ncols=3, integer_x=True)
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
        h, lab = axes[0].get_legend_handles_labels()
        axes[-1].legend(h, lab, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                        frameon=False)
    return fig


def plot_forest(rows: pd.DataFrame, path: str | Path, metric: str = "val_top1", margin: float | None = None,
                title: str | None = None) -> Path:
    """Forest plot of differences (see :func:`figure_forest`)."""
    return _save(figure_forest(rows, metric, margin, title), Path(path))


def figure_forest(rows: pd.DataFrame, metric: str = "val_top1", margin: float | None = None,
                  title: str | None = None):
    """One row per comparison (columns ``label``, ``estimate``, ``ci_low``, ``ci_high``, ``primary``): the estimate
    and its 95% interval, top to bottom in the order given; the primary in red, the others in grey-blue;
    zero as a line and, with a ``margin``, the equivalence region [-m, +m] shaded."""
    n = len(rows)
    fig, (ax,) = _figure(9.5, 1.2 + 0.42 * max(n, 1))
    y = np.arange(n)[::-1].astype(float)
    if margin is not None:
        ax.axvspan(-margin, margin, color="#2ca02c", alpha=0.12, lw=0, label=f"equivalence margin ±{margin:g}")
    ax.axvline(0.0, color="black", lw=0.8)
    for yi, (_, r) in zip(y, rows.iterrows()):
        primary = bool(r.get("primary", False))
        c = "#d62728" if primary else "#4c72b0"
        ax.errorbar([r["estimate"]], [yi], xerr=[[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]],
                    fmt="D" if primary else "o", color=c, ms=7 if primary else 5, capsize=3,
                    lw=2.2 if primary else 1.2, label="primary comparison" if primary else None)
    ax.set_yticks(y, [str(v) for v in rows["label"]] if n else [])
    for tick, (_, r) in zip(ax.get_yticklabels(), rows.iterrows()):
        if bool(r.get("primary", False)):
            tick.set_fontweight("bold")
            tick.set_color("#d62728")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"difference in final {metric_label(metric)}, 95% CI")
    ax.set_title(title or f"differences in final {metric} (estimate and 95% CI)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    _legend_outside(ax)
    return fig
