"""Sweep reports: a sweep's trials read back from MLflow, summarised with honest statistics.

* :mod:`.load`: :func:`load_sweep` reads the trial runs of a sweep (``MlflowClient.search_runs``,
  ``get_metric_history``) into a pandas table, one row per trial, and the per-epoch curves;
* :mod:`.stats`: plain functions of that table: arms, :func:`arm_summary` (n, mean, sd, 95% CI),
  :func:`paired_differences` against a baseline matched by seed, :func:`on_ratio_contrasts`,
  :func:`on_ratio_trend`, :func:`holm`;
* :mod:`.design`: power (minimum detectable difference, seeds needed), TOST, the pooled arm + seed model
  and its trend (statsmodels);
* :mod:`.declared`: the spec's declared ``analysis:`` estimated and worded by rule (primary first, Holm);
* :mod:`.plots`: the figures (forest plot included); :mod:`.markdown`: ``report.md`` with its conclusion rules;
* :mod:`.csv_source`: ``epochs.csv`` and reading a report's CSVs back (``echos report --from-csv``);
* :mod:`.result`: every number of a report (:class:`Report`); :mod:`.build`: everything written to one folder;
  :mod:`.cli`: ``echos report SWEEP``.
"""

import lazy_loader  # pandas and SciPy load when a report is built, not with the command line

__getattr__, __dir__, _ = lazy_loader.attach(__name__, submod_attrs={
    "result": ["Report", "analyse"],
    "build": ["build_report"],
    "load": ["ReportError", "SweepRuns", "load_sweep", "parse_param"],
    "stats": ["arm_keys", "arm_order", "arm_summary", "assign_arms", "final_values", "holm", "on_ratio_contrasts",
              "on_ratio_trend", "paired_differences", "t_interval"],
})

__all__ = [
    "ReportError", "SweepRuns", "load_sweep", "parse_param",
    "arm_keys", "assign_arms", "arm_order", "final_values", "t_interval", "arm_summary",
    "paired_differences", "on_ratio_contrasts", "on_ratio_trend", "holm",
    "Report", "analyse", "build_report",
]
