"""A report's own CSVs as its source: ``epochs.csv`` written beside ``trials.csv``, and both read back.

``trials.csv`` (one row per trial: run id, arm, seed, status, final and best metrics, tags, every config key)
and ``epochs.csv`` (one row per trial and epoch: run id, arm, seed, epoch, then one column per logged metric)
hold everything a report is computed from, so ``echos report --from-csv DIR`` rebuilds every table and figure
without the MLflow store (:func:`load_csv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from .load import ReportError, SweepRuns

__all__ = ["write_epochs_csv", "load_csv", "EPOCH_INDEX"]

EPOCH_INDEX = ["run_id", "arm", "seed", "epoch"]


def write_epochs_csv(trials: pd.DataFrame, curves: pd.DataFrame, path: str | Path) -> Path:
    """Every trial's per-epoch metrics, wide: ``run_id, arm, seed, epoch, <metric>...`` (trials need ``arm``)."""
    wide = curves.pivot_table(index=["run_id", "epoch"], columns="key", values="value", aggfunc="last")
    wide.columns.name = None
    wide = wide.reset_index()
    ids = trials[["run_id", "arm", "seed"]]
    out = ids.merge(wide, on="run_id", how="inner").sort_values(["arm", "seed", "run_id", "epoch"], kind="stable")
    path = Path(path)
    out.to_csv(path, index=False)
    return path


def load_csv(folder: str | Path, metric: str = "val_top1") -> SweepRuns:
    """A :class:`SweepRuns` from ``folder/trials.csv`` and, when present, ``folder/epochs.csv``."""
    folder = Path(folder)
    trials_csv = folder / "trials.csv"
    if not trials_csv.is_file():
        raise ReportError(f"--from-csv {folder}: no trials.csv there (a folder `echos report` wrote)")
    try:
        trials = pd.read_csv(trials_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReportError(f"--from-csv {trials_csv}: not a readable CSV ({' '.join(str(e).split())})") from None
    missing = [c for c in ("run_id", "seed", "complete", "asha_stopped") if c not in trials.columns]
    if missing:
        raise ReportError(f"--from-csv {trials_csv}: missing column(s) {', '.join(missing)}")
    if f"final_{metric}" not in trials.columns:
        have = sorted(c[len("final_"):] for c in trials.columns if c.startswith("final_"))
        raise ReportError(f"--metric {metric!r}: not in {trials_csv}; there: {', '.join(have)}")
    for col in ("complete", "asha_stopped"):
        trials[col] = trials[col].astype(str).str.lower().eq("true")
    trials = trials.drop(columns=["arm"], errors="ignore")  # recomputed from the config columns
    curves = pd.DataFrame(columns=["run_id", "key", "epoch", "value"])
    epochs_csv = folder / "epochs.csv"
    if epochs_csv.is_file():
        wide = pd.read_csv(epochs_csv)
        keys = [c for c in wide.columns if c not in EPOCH_INDEX]
        curves = wide.melt(id_vars=["run_id", "epoch"], value_vars=keys, var_name="key", value_name="value") \
            .dropna(subset=["value"])
    sweep_ids = sorted({str(s) for s in trials.get("sweep_id", pd.Series(dtype=str)).dropna()})
    name = _sweep_name(sweep_ids) or folder.name
    param_keys = [c for c in trials.columns if "." in c and not c.startswith("final_")]
    return SweepRuns(sweep=name, experiment=name, tracking_uri=f"CSV files in {folder}", metric=metric,
                     sweep_ids=sweep_ids, all_sweep_ids=sweep_ids, trials=trials, curves=curves,
                     param_keys=param_keys, parents=[], from_csv=str(folder))


def _sweep_name(sweep_ids: list[str]) -> Optional[str]:
    """``onoff_ratio-20261124-224146`` -> ``onoff_ratio`` (the sweep id is ``<name>-<date>-<time>``)."""
    names = {s.rsplit("-", 2)[0] for s in sweep_ids if s.count("-") >= 2}
    return names.pop() if len(names) == 1 else None
