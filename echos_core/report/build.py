"""One sweep report written to one folder: CSV tables, figures and ``report.md``.

:func:`build_report` is what ``echos report`` runs after :func:`~echos_core.report.load.load_sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from .csv_source import write_epochs_csv
from .load import SweepRuns
from .markdown import render_report
from .plots import (has_cluster_fractions, plot_cluster_fractions, plot_forest, plot_learning_curves,
                    plot_metric_vs)
from .result import Report, analyse

if TYPE_CHECKING:
    from ..sweep.analysis_spec import AnalysisSpec

__all__ = ["build_report", "forest_rows"]

# Figures drawn when their key varies among the DoG arms, file name -> config keys on the x axis.
_VS_FIGURES = {
    "accuracy_vs_on_ratio.png": ("init.on_ratio",),
    "accuracy_vs_gamma.png": ("init.gamma_low", "init.gamma_high"),
    "accuracy_vs_kernel_size.png": ("model.kernel_size",),
}


def build_report(runs: SweepRuns, out_dir: str | Path, *, baselines: Optional[Sequence[str]] = None,
                 reference_on_ratio: float = 0.5, command: Optional[str] = None,
                 rerun_command: Optional[str] = None, analysis: Optional["AnalysisSpec"] = None) -> Report:
    """Write ``trials.csv``, ``epochs.csv``, ``arms.csv``, ``paired.csv``, the figures and ``report.md`` into
    ``out_dir`` (the first two not when rebuilding in the folder they were read from); with a
    declared ``analysis`` also ``analysis.yaml`` (the section itself) and ``declared.csv`` (its results)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = analyse(runs, baselines, reference_on_ratio, analysis)
    metric = runs.metric
    files = []

    source = Path(runs.from_csv).resolve() if runs.from_csv else None
    if source != out.resolve():  # never rewrite the CSVs a report is rebuilt from
        trials_csv = rep.trials.drop(columns=["start_time"], errors="ignore").copy()
        trials_csv.insert(1, "arm", trials_csv.pop("arm"))
        trials_csv.to_csv(out / "trials.csv", index=False)
        files.append(out / "trials.csv")
        if not runs.curves.empty:
            files.append(write_epochs_csv(rep.trials, runs.curves, out / "epochs.csv"))
    rep.arms.to_csv(out / "arms.csv", index=False)
    pd.concat([rep.paired.assign(kind="vs baseline"), rep.contrasts.assign(kind=f"vs on_ratio={reference_on_ratio:g}")],
              ignore_index=True).to_csv(out / "paired.csv", index=False)
    files += [out / "arms.csv", out / "paired.csv"]
    if rep.declared is not None:
        import yaml

        (out / "analysis.yaml").write_text(yaml.safe_dump(rep.declared.spec.to_dict(), sort_keys=False))
        rep.declared.table().to_csv(out / "declared.csv", index=False)
        files += [out / "analysis.yaml", out / "declared.csv"]

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
    forest, margin = forest_rows(rep)
    if not forest.empty:
        figures["forest.png"] = plot_forest(forest, out / "forest.png", metric, margin)
    if not runs.curves.empty:  # a report rebuilt from a trials.csv without its epochs.csv has no curves
        figures["learning_curves.png"] = plot_learning_curves(rep.trials, runs.curves, out / "learning_curves.png",
                                                              metric)
    if has_cluster_fractions(runs.curves):
        figures["cluster_fractions.png"] = plot_cluster_fractions(rep.trials, runs.curves,
                                                                  out / "cluster_fractions.png", metric)
    files += list(figures.values())

    text = render_report(rep, figures=list(figures), command=command, rerun_command=rerun_command)
    (out / "report.md").write_text(text)
    files.append(out / "report.md")
    rep.files = files
    return rep


def forest_rows(rep: Report) -> tuple[pd.DataFrame, Optional[float]]:
    """The comparisons of the forest plot and its equivalence margin: the declared analysis (primary first) when
    there is one, else every exploratory paired comparison (no margin: none was declared)."""
    cols = ["label", "estimate", "ci_low", "ci_high", "primary"]
    if rep.declared is not None:
        rows = [{"label": (f"{r.arm} − {r.versus}" if not r.comparison.is_trend else f"trend: change over {r.versus}")
                 + ("" if r.role == "primary" else " (secondary)"),
                 "estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high, "primary": r.role == "primary"}
                for r in rep.declared.results if np.isfinite(r.ci_low)]
        return pd.DataFrame(rows, columns=cols), rep.declared.spec.margin
    both = pd.concat([t for t in (rep.paired, rep.contrasts) if not t.empty], ignore_index=True) \
        if not (rep.paired.empty and rep.contrasts.empty) else pd.DataFrame(columns=["arm", "baseline", "mean_diff",
                                                                                    "ci_low", "ci_high"])
    rows = [{"label": f"{r.arm} − {r.baseline}", "estimate": r.mean_diff, "ci_low": r.ci_low, "ci_high": r.ci_high,
             "primary": False} for _, r in both.iterrows() if np.isfinite(float(r.ci_low))]
    return pd.DataFrame(rows, columns=cols), None
