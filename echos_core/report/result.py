"""All the statistics of one sweep report (:class:`Report`), computed without writing anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from ..registry import baselines as registry_baselines
from .declared import DeclaredAnalysis, run_declared
from .load import SweepRuns
from .stats import PAIR_COLUMNS, arm_summary, assign_arms, holm, on_ratio_contrasts, on_ratio_trend, paired_differences

if TYPE_CHECKING:
    from ..sweep.analysis_spec import AnalysisSpec

__all__ = ["Report", "analyse"]


@dataclass
class Report:
    """The numbers of a report (tables as DataFrames) and the files written."""

    runs: SweepRuns
    trials: pd.DataFrame  # with the ``arm`` column
    arms: pd.DataFrame  # :func:`arm_summary`
    paired: pd.DataFrame  # DoG arms vs baselines, with p_holm
    contrasts: pd.DataFrame  # DoG arms vs the reference on_ratio, with p_holm
    trend: pd.DataFrame  # :func:`on_ratio_trend`
    baselines: list[str]
    reference_on_ratio: float
    n_comparisons: int = 0  # size of the Holm family
    declared: Optional[DeclaredAnalysis] = None  # the spec's analysis: section, estimated
    files: list[Path] = field(default_factory=list)


def analyse(runs: SweepRuns, baselines: Optional[Sequence[str]] = None,
            reference_on_ratio: float = 0.5, analysis: Optional["AnalysisSpec"] = None) -> Report:
    """All the statistics of a report, without writing anything (``analysis``: the spec's declared analysis)."""
    metric = runs.metric
    baselines = registry_baselines() if baselines is None else baselines
    trials = assign_arms(runs.trials)
    arms = arm_summary(trials, metric)
    tables = [paired_differences(trials, b, metric) for b in baselines]
    found = [t for t in tables if not t.empty]
    paired = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=PAIR_COLUMNS)
    contrasts = on_ratio_contrasts(trials, reference_on_ratio, metric)
    # One Holm family: every paired comparison this report makes.
    p_all = np.concatenate([paired["p"].to_numpy(dtype=float), contrasts["p"].to_numpy(dtype=float)])
    adj = holm(p_all)
    paired = paired.assign(p_holm=adj[:len(paired)])
    contrasts = contrasts.assign(p_holm=adj[len(paired):])
    declared = run_declared(trials, analysis, metric) if analysis is not None else None
    return Report(runs=runs, trials=trials, arms=arms, paired=paired, contrasts=contrasts,
                  trend=on_ratio_trend(trials, metric), baselines=list(baselines),
                  reference_on_ratio=reference_on_ratio, n_comparisons=int(np.isfinite(p_all).sum()),
                  declared=declared)
