"""The sweep's parent run at the end of a sweep: what a person opening it in MLflow should find.

* metrics: ``best_<metric>`` (the best trial's value) and the counts ``n_finished``, ``n_stopped``
  (by ASHA) and ``n_failed``;
* ``by_configuration.csv``: one row per configuration (seeds pooled): counts, mean, sd, min, max;
* ``report/``: when the sweep has a comparison to make (more than one arm, more than one seed),
  what ``echos report`` writes (``report.md``, CSV tables, figures), made here automatically.

The trials are the evidence; nothing here is needed to rebuild a result (``echos report`` reads
the trial runs themselves).
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TextIO

from .spec import SweepSpec
from .summary import SweepSummary

__all__ = ["finish_parent", "has_comparison", "paired_lines", "BY_CONFIG_FILE", "REPORT_DIR"]

BY_CONFIG_FILE = "by_configuration.csv"
REPORT_DIR = "report"


def has_comparison(spec: SweepSpec, summary: SweepSummary) -> bool:
    """More than one configuration reported the metric, and the sweep has more than one seed."""
    return len(spec.seeds) > 1 and sum(1 for r in summary.by_config if r["n"]) > 1


def finish_parent(parent, spec: SweepSpec, summary: SweepSummary, sweep_id: str, out: TextIO) -> None:
    """Log the summary's metrics, the per-configuration CSV and (with a comparison) the report to ``parent``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    parent.client.log_batch(parent.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.metrics.items()],
                            synchronous=True)
    with tempfile.TemporaryDirectory(prefix="echos-parent-") as tmp:
        folder = Path(tmp)
        if summary.by_config:
            _write_csv(folder / BY_CONFIG_FILE, summary.by_config)
            parent.log_artifact(folder / BY_CONFIG_FILE)
        if has_comparison(spec, summary):
            _log_report(parent, spec, sweep_id, folder / REPORT_DIR, out)


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _log_report(parent, spec: SweepSpec, sweep_id: str, folder: Path, out: TextIO) -> None:
    """``echos report`` of this sweep invocation into ``folder``, logged as ``report/``; a report that
    cannot be made is a warning (the sweep itself succeeded), with its traceback when unexpected."""
    from ..report.build import build_report
    from ..report.load import ReportError, load_sweep

    source = spec.source or spec.name
    try:
        runs = load_sweep(parent.tracking_uri, spec.name, spec.experiment, sweep_id=sweep_id, metric=spec.metric)
        rep = build_report(runs, folder, command=f"echos report {source} --sweep-id {sweep_id}",
                           rerun_command=f"echos sweep {source}", analysis=spec.analysis)
    except ReportError as e:
        print(f"echos: warning: no report on the sweep's parent run: {e}", file=sys.stderr)
        return
    except Exception:
        print("echos: warning: the report for the sweep's parent run failed:", file=sys.stderr)
        traceback.print_exc()
        return
    parent.client.log_artifacts(parent.run_id, str(folder), REPORT_DIR)
    print(f"report ({len(rep.files)} files: report.md, tables, figures) logged to the sweep's parent run "
          f"under {REPORT_DIR}/", file=out)
    for line in paired_lines(rep.paired, spec.metric):
        print(line, file=out)


def paired_lines(paired, metric: str) -> list[str]:
    """The paired differences against the baselines, one line each (what the sweep's comparison found)."""
    rows = [r for _, r in paired.iterrows() if r["n_pairs"] and r["n_pairs"] >= 2]
    if not rows:
        return ["paired differences: none (no arm and baseline finished on two or more common seeds)"]
    lines = [f"paired differences ({metric}, arm - baseline, mean [95% CI] over seeds both finished):"]
    for r in rows:
        lines.append(f"  {r['arm']} - {r['baseline']}: {r['mean_diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                     f", {int(r['n_pairs'])} pairs")
    return lines
