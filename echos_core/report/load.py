"""A sweep's trials read back from the MLflow tracking store into pandas.

Only MLflow's public client is used (``MlflowClient.search_runs`` and ``get_metric_history``),
so the same code reads a local SQLite store and a remote tracking server.

What a sweep writes (:mod:`echos_core.sweep`): one experiment, a parent run per sweep
invocation (tag ``echos.role=sweep``, ``echos.sweep_id``) and one nested run per trial with

* params: the resolved trainer config, flattened to dotted keys, as strings (``'null'`` for None);
* metrics: one value per epoch at ``step = epoch`` (``val_top1``, ``val_loss``, ``epoch``, ...);
* tags: ``echos.sweep``, ``echos.sweep_id``, ``echos.trial_id``, ``echos.status``,
  ``echos.asha_stopped``, ``echos.git_revision``, versions and hardware.

:func:`load_sweep` turns that into a :class:`SweepRuns`: one row per trial (``trials``) and the
per-epoch curves in long form (``curves``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..validation import ConfigError
from ..tracking import (ROLE_SWEEP, TAG_ASHA_STOPPED, TAG_ROLE, TAG_SEED, TAG_STATUS, TAG_SWEEP, TAG_SWEEP_ID,
                        TAG_TRIAL_ID, echos_tag, find_runs, mlflow_client)

__all__ = ["ReportError", "SweepRuns", "load_sweep", "parse_param", "CURVE_KEYS", "TRIAL_COLUMNS"]

# Per-epoch curves the figures draw (besides the analysed metric); every other logged metric's history is read too,
# for epochs.csv.
CURVE_KEYS = ("val_top1", "kernels/on_fraction", "kernels/off_fraction", "kernels/other_fraction")
# Tags copied into the trials table (column name = tag without the ``echos.`` prefix).
_TAG_COLUMNS = ("git_revision", "node_host", "hostname", "device_name", "cuda_available", "cpu_count",
                "torch_threads", "torch_version", "timm_version", "echos_version", "python")
# The first columns of the trials table, in this order; then final_* metrics, then the params.
TRIAL_COLUMNS = ("run_id", "mlflow_run_name", "sweep_id", "trial_id", "seed", "status", "asha_stopped", "complete",
                 "epochs_completed", "epochs_planned", "start_time")


class ReportError(ConfigError):
    """Bad input to ``echos report`` (unknown experiment, sweep, metric...): one line, exit status 2."""


@dataclass
class SweepRuns:
    """The trials of one sweep (or of several invocations of it) as read from MLflow."""

    sweep: str
    experiment: str
    tracking_uri: str
    metric: str
    sweep_ids: list[str]  # the invocations included, oldest first
    all_sweep_ids: list[str]  # every invocation of this sweep found in the experiment
    trials: pd.DataFrame  # one row per trial: TRIAL_COLUMNS, final_<metric>..., best_*, params (dotted)
    curves: pd.DataFrame  # long form: run_id, key, epoch, value
    param_keys: list[str]  # the dotted config keys (columns of ``trials``)
    parents: list[dict[str, Any]] = field(default_factory=list)  # parent runs: run_id, sweep_id, params, tags
    from_csv: Optional[str] = None  # the results folder the trials were read back from (no MLflow store)


def parse_param(s: Optional[str]) -> Any:
    """An MLflow param string back to a value: ``'null'`` -> None, ``'true'`` -> True, ``'5'`` -> 5, ``'0.5'`` -> 0.5.

    Any other string stays a string.
    """
    if s is None or s == "null":
        return None
    if s in ("true", "false"):
        return s == "true"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def _check_store(tracking_uri: str) -> None:
    """A SQLite store that does not exist is an error (MLflow would silently create an empty one)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if str(path) != ":memory:" and not path.is_file():
            raise ReportError(f"--tracking-uri {tracking_uri}: no MLflow store at {path} (run a sweep first, "
                              "or point --tracking-uri / $MLFLOW_TRACKING_URI at the store the sweep wrote)")
    elif "://" not in tracking_uri and not Path(tracking_uri).is_dir():
        raise ReportError(f"--tracking-uri {tracking_uri}: no such folder (MLflow file store)")


def _experiment_names(client) -> list[str]:
    from mlflow.entities import ViewType

    names, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        names += [e.name for e in page]
        token = page.token
        if not token:
            return sorted(names)


def load_sweep(tracking_uri: str, sweep: str, experiment: Optional[str] = None, *,
               sweep_id: Optional[str] = None, metric: str = "val_top1") -> SweepRuns:
    """The trials of sweep ``sweep`` in ``experiment`` (default: the sweep name).

    ``sweep_id``: which invocation; ``None`` = the newest, ``'all'`` = every invocation pooled.
    Raises :class:`ReportError` (one line) for an unknown store, experiment, sweep, sweep id or metric.
    """
    experiment = experiment or sweep
    _check_store(tracking_uri)
    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = _experiment_names(client)
        raise ReportError(f"experiment {experiment!r} not found in {tracking_uri}; experiments there: "
                          f"{', '.join(names) if names else '(none)'}")
    runs = find_runs(tracking_uri, experiment, {TAG_SWEEP: sweep})  # oldest first
    trials = [r for r in runs if TAG_TRIAL_ID in r.data.tags]
    if not trials:
        others = sorted({r.data.tags.get(TAG_SWEEP) for r in find_runs(tracking_uri, experiment, {})} - {None})
        raise ReportError(f"sweep {sweep!r}: no trial runs in experiment {experiment!r} ({tracking_uri}); "
                          f"sweeps there: {', '.join(others) if others else '(none)'}")
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_SWEEP]

    all_ids, chosen = _choose_invocations(parents, trials, sweep, sweep_id)
    trials = [t for t in trials if t.data.tags.get(TAG_SWEEP_ID, "") in chosen]
    if not any(metric in t.data.metrics for t in trials):
        logged = sorted({k for t in trials for k in t.data.metrics})
        raise ReportError(f"--metric {metric!r}: no trial logged it; logged metrics: {', '.join(logged)}")

    df, curve_df, param_keys = _trials_frame(client, trials, metric)
    parent_info = [{"run_id": p.info.run_id, "sweep_id": p.data.tags.get(TAG_SWEEP_ID, ""),
                    "params": dict(p.data.params), "tags": dict(p.data.tags)}
                   for p in parents if p.data.tags.get(TAG_SWEEP_ID, "") in chosen]
    return SweepRuns(sweep=sweep, experiment=experiment, tracking_uri=tracking_uri, metric=metric,
                     sweep_ids=chosen, all_sweep_ids=all_ids, trials=df, curves=curve_df,
                     param_keys=param_keys, parents=parent_info)


def _choose_invocations(parents: list, trials: list, sweep: str, sweep_id: Optional[str]) -> tuple[list, list]:
    """(every invocation id with trials, ordered by its first run; the ones ``sweep_id`` chooses)."""
    first_seen: dict[str, int] = {}
    for r in parents + trials:
        sid = r.data.tags.get(TAG_SWEEP_ID, "")
        first_seen[sid] = min(first_seen.get(sid, r.info.start_time), r.info.start_time)
    all_ids = sorted((s for s in first_seen if any(t.data.tags.get(TAG_SWEEP_ID, "") == s for t in trials)),
                     key=lambda s: (first_seen[s], s))
    if sweep_id is None:
        return all_ids, all_ids[-1:]
    if sweep_id == "all":
        return all_ids, list(all_ids)
    if sweep_id in all_ids:
        return all_ids, [sweep_id]
    raise ReportError(f"--sweep-id {sweep_id!r}: not a sweep id of {sweep!r} with trials; known: "
                      f"{', '.join(all_ids)} (or 'all')")


def _trials_frame(client, trials: list, metric: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(one row per trial, columns in reading order; the per-epoch curves; the param keys)."""
    rows, curves = [], []
    for t in trials:
        row, hist = _trial_row(client, t, metric)
        rows.append(row)
        curves += hist
    param_keys = sorted({k for t in trials for k in t.data.params})
    df = pd.DataFrame(rows)
    for k in param_keys:
        if k not in df:
            df[k] = None
    finals = sorted(c for c in df.columns if c.startswith("final_") and c != f"final_{metric}")
    best = list(dict.fromkeys(c for c in (f"best_{metric}", "best_val_top1", "best_epoch") if c in df.columns))
    tag_cols = [c for c in _TAG_COLUMNS if c in df.columns]
    order = list(TRIAL_COLUMNS) + [f"final_{metric}"] + best + finals + tag_cols + param_keys
    df = df[[c for c in dict.fromkeys(order) if c in df.columns]]
    return df, pd.DataFrame(curves, columns=["run_id", "key", "epoch", "value"]), param_keys


def _trial_row(client, run, metric: str) -> tuple[dict, list[tuple]]:
    tags, params, latest = run.data.tags, run.data.params, run.data.metrics
    hist: dict[str, list] = {}
    for key in dict.fromkeys((metric, *CURVE_KEYS, *sorted(k for k in latest if k != "epoch"))):
        if key in latest:
            points = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                      key=lambda m: (m.step, m.timestamp))}
            hist[key] = sorted(points.items())  # one value per epoch (the last logged, if repeated)
    steps = [s for s, _ in hist.get(metric, [])]
    epochs_completed = int(latest["epoch"]) if "epoch" in latest else (max(steps) if steps else 0)
    planned = parse_param(params.get("train.epochs"))
    stopped = tags.get(TAG_ASHA_STOPPED, "false").lower() == "true" or tags.get(TAG_STATUS) == "stopped"
    status = tags.get(TAG_STATUS, run.info.status.lower())
    final = latest.get(metric, math.nan)
    complete = (not stopped and status not in ("error", "stopped") and isinstance(planned, int)
                and epochs_completed >= planned and math.isfinite(final))
    seed = parse_param(params.get("seed", tags.get(TAG_SEED)))
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "mlflow_run_name": run.info.run_name,
        "sweep_id": tags.get(TAG_SWEEP_ID, ""),
        "trial_id": tags.get(TAG_TRIAL_ID, ""),
        "seed": seed,
        "status": status,
        "asha_stopped": stopped,
        "complete": complete,
        "epochs_completed": epochs_completed,
        "epochs_planned": planned,
        "start_time": run.info.start_time,
    }
    for key, value in latest.items():
        if key != "epoch":
            row[f"final_{key}"] = value
    for key in dict.fromkeys((metric, "val_top1")):
        pts = hist.get(key)
        if pts:
            lower = "loss" in key
            step, value = (min if lower else max)(pts, key=lambda p: p[1])
            row[f"best_{key}"] = value
            if key == metric:
                row["best_epoch"] = step
    for name in _TAG_COLUMNS:
        if echos_tag(name) in tags:
            row[name] = tags[echos_tag(name)]
    for key, value in params.items():  # the config keys; none collides with the names above but ``seed``
        row[key] = parse_param(value)
    row["seed"] = seed
    curves = [(run.info.run_id, key, int(step), float(value)) for key, pts in hist.items() for step, value in pts]
    return row, curves
