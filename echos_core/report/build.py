"""One sweep report written to one folder: CSV tables, figures and ``report.md``.

:func:`build_report` is what ``echos report`` runs after :func:`~echos_core.report.load.load_sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .result import Report, analyse
from .load import SweepRuns
from .markdown import render_report
from .plots import has_cluster_fractions, plot_cluster_fractions, plot_learning_curves, plot_metric_vs

__all__ = ["build_report"]

# Figures drawn when their key varies among the DoG arms, file name -> config keys on the x axis.
_VS_FIGURES = {
    "accuracy_vs_on_ratio.png": ("init.on_ratio",),
    "accuracy_vs_gamma.png": ("init.gamma_low", "init.gamma_high"),
    "accuracy_vs_kernel_size.png": ("model.kernel_size",),
}


def build_report(runs: SweepRuns, out_dir: str | Path, *, baselines: Optional[Sequence[str]] = None,
                 reference_on_ratio: float = 0.5, command: Optional[str] = None,
                 rerun_command: Optional[str] = None) -> Report:
    """Write ``trials.csv``, ``arms.csv``, ``paired.csv``, the figures and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = analyse(runs, baselines, reference_on_ratio)
    metric = runs.metric
    files = []

    trials_csv = rep.trials.drop(columns=["start_time"]).copy()
    trials_csv.insert(1, "arm", trials_csv.pop("arm"))
    trials_csv.to_csv(out / "trials.csv", index=False)
    rep.arms.to_csv(out / "arms.csv", index=False)
    pd.concat([rep.paired.assign(kind="vs baseline"), rep.contrasts.assign(kind=f"vs on_ratio={reference_on_ratio:g}")],
              ignore_index=True).to_csv(out / "paired.csv", index=False)
    files += [out / "trials.csv", out / "arms.csv", out / "paired.csv"]

    keys = rep.trials.attrs.get("arm_keys", [])
    figures: dict[str, Path] = {}
    has_dog = bool((rep.trials.get("init.scheme") == "dog").any())
    for name, x_keys in _VS_FIGURES.items():
        varying = [k for k in x_keys if k in keys]
        if name == "accuracy_vs_on_ratio.png" and has_dog:
            varying = list(x_keys)  # the headline figure, even when on_ratio was held fixed
        if varying:
            xlim = (-0.05, 1.05) if varying == ["init.on_ratio"] else None  # the whole range, all-Off to all-On
            figures[name] = plot_metric_vs(rep.trials, varying, out / name, metric, xlim=xlim)
    figures["learning_curves.png"] = plot_learning_curves(rep.trials, runs.curves, out / "learning_curves.png", metric)
    if has_cluster_fractions(runs.curves):
        figures["cluster_fractions.png"] = plot_cluster_fractions(rep.trials, runs.curves,
                                                                  out / "cluster_fractions.png", metric)
    files += list(figures.values())

    text = render_report(rep, figures=list(figures), command=command, rerun_command=rerun_command)
    (out / "report.md").write_text(text)
    files.append(out / "report.md")
    rep.files = files
    return rep
