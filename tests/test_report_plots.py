"""The report's figures show the evidence: every seed (baselines too), legends outside, the forest plot."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from echos_core.report.plots import figure_forest, figure_learning_curves, figure_metric_vs
from echos_core.report.stats import assign_arms

FINAL = {("dog", 0.0): [60.0, 62.0, 61.0], ("dog", 0.5): [63.0, 64.5, 62.0], ("dog", 1.0): [61.0, 63.0, 60.5],
         ("kaiming", None): [58.0, 59.5, 57.25], ("default", None): [56.0, 55.5, 56.75]}
EPOCHS = 4


@pytest.fixture(scope="module")
def sweep():
    rows, curves = [], []
    for (scheme, ratio), vals in FINAL.items():
        for seed, v in enumerate(vals):
            rid = f"{scheme}-{ratio}-{seed}"
            rows.append({"run_id": rid, "seed": seed, "complete": True, "asha_stopped": False, "init.scheme": scheme,
                         "init.on_ratio": ratio if ratio is not None else 0.5, "final_val_top1": v})
            curves += [(rid, "val_top1", e, v - 3.0 * (EPOCHS - e) + 0.1 * seed) for e in range(1, EPOCHS + 1)]
    return assign_arms(pd.DataFrame(rows)), pd.DataFrame(curves, columns=["run_id", "key", "epoch", "value"])


def _legend_outside_axes(fig, ax):
    FigureCanvasAgg(fig).draw()
    leg = fig.legends[0] if fig.legends else ax.get_legend()
    assert leg is not None
    return leg.get_window_extent().x0 >= ax.get_window_extent().x1 - 1


def test_accuracy_plot_draws_every_seed_of_every_arm_baselines_included(sweep):
    trials, _ = sweep
    fig = figure_metric_vs(trials, ["init.on_ratio"], "val_top1", xlim=(-0.05, 1.05))
    ax = fig.axes[0]
    from matplotlib.collections import PathCollection

    drawn = sorted(float(y) for c in ax.collections if isinstance(c, PathCollection) for _, y in c.get_offsets())
    assert drawn == sorted(v for vals in FINAL.values() for v in vals)  # 15 seeds, kaiming and default too
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-2:] == ["kaiming", "default"] and "0.5" in labels
    assert _legend_outside_axes(fig, ax)


def test_learning_curves_draw_each_seed_and_the_mean(sweep):
    trials, curves = sweep
    fig = figure_learning_curves(trials, curves, "val_top1")
    ax = fig.axes[0]
    thin = [ln for ln in ax.get_lines() if ln.get_linewidth() == pytest.approx(0.7)]
    thick = [ln for ln in ax.get_lines() if ln.get_linewidth() == pytest.approx(2.0)]
    assert len(thin) == 15 and len(thick) == 5
    finals = sorted(float(ln.get_ydata()[-1]) for ln in thin)
    assert finals == pytest.approx(sorted(v + 0.1 * s for vals in FINAL.values() for s, v in enumerate(vals)))
    kaiming_mean = next(ln for ln in thick if ln.get_label().startswith("kaiming"))
    assert kaiming_mean.get_ydata()[-1] == pytest.approx(np.mean(FINAL[("kaiming", None)]) + 0.1)
    assert _legend_outside_axes(fig, ax)


def test_forest_plot_highlights_the_primary_and_draws_the_margin():
    rows = pd.DataFrame([
        {"label": "dog on_ratio=1 − dog on_ratio=0.5", "estimate": 1.7, "ci_low": -0.2, "ci_high": 3.6, "primary": True},
        {"label": "dog on_ratio=0 − dog on_ratio=0.5 (secondary)", "estimate": -4.6, "ci_low": -6.5, "ci_high": -2.7,
         "primary": False},
    ])
    fig = figure_forest(rows, "val_top1", margin=1.0)
    ax = fig.axes[0]
    band = [p for p in ax.patches if p.get_label().startswith("equivalence margin")]
    assert len(band) == 1
    x0, x1 = band[0].get_x(), band[0].get_x() + band[0].get_width()  # axvspan: a Rectangle in data x
    assert (x0, x1) == pytest.approx((-1.0, 1.0))
    points = {round(float(ln.get_xdata()[0]), 6): ln for ln in ax.get_lines() if ln.get_marker() in ("D", "o")}
    assert set(points) == {1.7, -4.6}
    assert points[1.7].get_color() == "#d62728" and points[-4.6].get_color() != "#d62728"
    assert points[1.7].get_ydata()[0] > points[-4.6].get_ydata()[0]  # primary on top
    bars = [c for c in ax.collections if c.get_segments()]
    spans = sorted(tuple(sorted((s[0][0], s[1][0]))) for c in bars for s in c.get_segments())
    assert spans == [pytest.approx((-6.5, -2.7)), pytest.approx((-0.2, 3.6))]
    bold = [t for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
    assert [t.get_text() for t in bold] == ["dog on_ratio=1 − dog on_ratio=0.5"]


def test_trainer_mosaic_titles_name_the_run_layer_and_kernel_count(tmp_path, monkeypatch):
    import echos_core.plots as plots
    from echos_core.config import config_from_dict
    from echos_core.models import create_model
    from echos_core.trainer import write_kernel_mosaics

    calls = []
    monkeypatch.setattr(plots, "kernel_mosaic", lambda kernels, path, **kw: calls.append((kernels.shape, kw)) or path)
    cfg = config_from_dict({"model": {"name": "convmixer", "dim": 96, "depth": 2, "kernel_size": 5, "patch_size": 2}})
    model = create_model(cfg.model, num_classes=4, in_chans=3)
    write_kernel_mosaics(model, tmp_path / "run-7" / "kernels", "init", max_kernels=64)
    assert len(calls) == 2  # first and last depthwise layer
    for shape, kw in calls:
        assert shape[0] == 96 and kw["max_kernels"] == 64  # all 96 handed over: the mosaic says "first 64 of 96"
        assert kw["title"].startswith("run run-7, init: layer blocks.") and kw["title"].endswith("96 kernels")
