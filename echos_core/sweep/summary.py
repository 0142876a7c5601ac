"""What a sweep prints: the resolved spec (``--dry-run``) and the summary at the end."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from ..tracking import (TAG_BEST_CHECKPOINT, TAG_BEST_RUN_ID, TAG_BEST_TRIAL_ID, TAG_N_ASHA_STOPPED, TAG_N_ERRORS,
                        TAG_N_TRIALS, TAG_WALL_S, best_metric_tag, resolve_tracking_uri)
from .analysis_spec import power_lines, resolve_pilot_sd
from .spec import SweepSpec, base_value
from .trainable import sampled_values, trial_outcome

__all__ = ["describe_spec", "summarise", "SweepSummary", "open_lines", "where_lines"]


def describe_spec(spec: SweepSpec, tracking_uri: str, storage: str, n_checked: Optional[int] = None) -> str:
    """The resolved sweep as text: what ``--dry-run`` prints."""
    lines = [f"sweep {spec.name}" + (f" ({spec.source})" if spec.source else "")]
    if spec.description:
        lines.append("  " + " ".join(spec.description.split()))
    lines.append("space:")
    if not spec.params:
        lines.append("  (empty: the base config, once per seed)")
    width = max((len(p.key) for p in spec.params), default=0)
    for p in spec.params:
        lines.append(f"  {p.key:<{width}}  {p.describe()}")
    lines += [
        f"search: {spec.search.describe()}",
        f"scheduler: {spec.scheduler.describe()}",
        f"objective: {spec.mode} {spec.metric}",
        f"seeds: {spec.seeds} (each configuration runs once per seed; one MLflow run per trial)",
        f"resources per trial: {spec.describe_resources()}; max concurrent: "
        f"{spec.max_concurrent or 'as many as fit'}",
        f"mlflow: {tracking_uri} experiment {spec.experiment!r}",
        f"ray storage: {storage}",
    ]
    if n_checked is not None:
        lines.append(f"validated: base config, {n_checked} configurations at the bounds of the space "
                     "(Config + check_init on the built models)")
    what = ("grid of " + " x ".join(str(p.size) for p in spec.params) if spec.search.algorithm == "grid" and spec.params
            else f"{spec.n_configs} configuration{'s' if spec.n_configs != 1 else ''}")
    lines.append(f"trials: {spec.n_trials} = {what} x {len(spec.seeds)} seed{'s' if len(spec.seeds) != 1 else ''}")
    if spec.analysis is not None:
        sd, source = resolve_pilot_sd(spec.analysis, tracking_uri)
        lines += power_lines(spec.analysis, seeds=len(spec.seeds), params=spec.params,
                             base_value=lambda k: base_value(spec.base, k), grid=spec.search.algorithm == "grid",
                             sd=sd, sd_source=source)
    return "\n".join(lines)


@dataclass
class SweepSummary:
    """The end of a sweep, for its parent run: tags, metrics and one row per configuration."""

    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # best_<metric>, n_finished, n_stopped, n_failed
    by_config: list = field(default_factory=list)  # one dict per configuration (the CSV artifact)


def summarise(spec: SweepSpec, results, wall: float, sweep_id: str, out: TextIO) -> SweepSummary:
    """Print the end of a sweep (counts, best trial and its checkpoint, per-configuration means over
    seeds) from Tune's ``ResultGrid``; return what the parent run gets."""
    rows = []
    for r in results:
        m = r.metrics or {}
        stopped = trial_outcome(m, r.error is not None)[1]
        rows.append({"result": r, "metrics": m, "stopped": stopped, "error": r.error is not None,
                     "config": sampled_values(r.config or {})})
    n_err = sum(r["error"] for r in rows)
    n_stop = sum(r["stopped"] for r in rows)
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("")
    p(f"sweep {sweep_id}: {len(rows)} trials in {wall / 60:.1f} min: {len(rows) - n_err - n_stop} finished, "
      f"{n_stop} stopped early by ASHA, {n_err} failed")
    summary = SweepSummary(
        tags={TAG_N_TRIALS: len(rows), TAG_N_ASHA_STOPPED: n_stop, TAG_N_ERRORS: n_err, TAG_WALL_S: round(wall, 1)},
        metrics={"n_finished": len(rows) - n_err - n_stop, "n_stopped": n_stop, "n_failed": n_err},
        by_config=_config_rows(spec, rows))

    ok = [r for r in rows if not r["error"] and _finite(r["metrics"].get(spec.metric))]
    if ok:
        sign = 1 if spec.mode == "max" else -1
        best = max(ok, key=lambda r: sign * r["metrics"][spec.metric])
        res, m = best["result"], best["metrics"]
        # a data-parallel trial's checkpoints are its Ray Train run's (TuneReportCallback names them)
        ckpt = res.checkpoint.path if res.checkpoint is not None else res.metrics.get("checkpoint_path", "(none)")
        p(f"best trial {m.get('trial_id')}: {spec.metric} {m[spec.metric]:.4g} at epoch {m.get('epoch')}"
          f"/{m.get('max_epochs')}{' (stopped early)' if best['stopped'] else ''}, seed {m.get('seed')}, "
          f"config {_label(best['config'])}")
        p(f"  checkpoint: {ckpt}")
        p(f"  mlflow run: {m.get('mlflow_run_id')}")
        summary.tags.update({TAG_BEST_TRIAL_ID: m.get("trial_id"), TAG_BEST_RUN_ID: m.get("mlflow_run_id"),
                             best_metric_tag(spec.metric): m[spec.metric], TAG_BEST_CHECKPOINT: ckpt})
        summary.metrics[f"best_{spec.metric}"] = float(m[spec.metric])
        if len(spec.seeds) > 1:
            _print_by_config(spec, summary.by_config, p)
    else:
        p("no trial reported a finite " + spec.metric)
    return summary


def where_lines(spec: SweepSpec, tracking_uri: str, parent_run_id: str, experiment_id: Optional[str]) -> list[str]:
    """The last lines of a sweep: where its runs are, and how to open them in the MLflow UI."""
    lines = [f"MLflow: {tracking_uri}, experiment {spec.experiment!r}, sweep parent run {parent_run_id}"]
    return lines + ["  " + line for line in open_lines(tracking_uri, experiment_id)]


def open_lines(tracking_uri: str, experiment_id: Optional[str]) -> list[str]:
    """How to open the sweep's runs table in the MLflow UI (the link skips MLflow 3's GenAI overview)."""
    from ..ui import DEFAULT_PORT, runs_url

    if tracking_uri.startswith(("http://", "https://")):
        return [f"open it: {runs_url(tracking_uri, experiment_id) if experiment_id else tracking_uri}"]
    cmd = "echos ui" + ("" if tracking_uri == resolve_tracking_uri(None) else f" --backend-store-uri {tracking_uri}")
    lines = [f"open it: {cmd}"]
    if experiment_id:
        lines.append(f"  then: {runs_url(f'http://127.0.0.1:{DEFAULT_PORT}', experiment_id)}")
    return lines


def _config_rows(spec: SweepSpec, rows: list[dict]) -> list[dict]:
    """Per configuration (sampled values, seeds pooled): trial counts and the metric's mean, sd, min, max
    over the trials that reported it (ASHA-stopped trials at the epoch they stopped), best first."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[_inline(r["config"])].append(r)
    sign = 1 if spec.mode == "max" else -1
    out = []
    for rs in groups.values():
        vals = [r["metrics"][spec.metric] for r in rs if not r["error"] and _finite(r["metrics"].get(spec.metric))]
        row = {"configuration": _label(rs[0]["config"]), **{k: _plain(v) for k, v in rs[0]["config"].items()},
               "n_trials": len(rs), "n_stopped": sum(r["stopped"] for r in rs), "n_failed": sum(r["error"] for r in rs),
               "n": len(vals), f"mean_{spec.metric}": statistics.fmean(vals) if vals else math.nan,
               f"sd_{spec.metric}": statistics.stdev(vals) if len(vals) > 1 else math.nan,
               f"min_{spec.metric}": min(vals, default=math.nan), f"max_{spec.metric}": max(vals, default=math.nan)}
        out.append(row)
    out.sort(key=lambda r: (math.isnan(r[f"mean_{spec.metric}"]), -sign * r[f"mean_{spec.metric}"]))
    return out


def _print_by_config(spec: SweepSpec, by_config: list[dict], p) -> None:
    p(f"by configuration ({spec.metric} at each trial's last epoch, mean +- sd over seeds; "
      "ASHA-stopped trials count at the epoch they stopped):")
    shown = [r for r in by_config if r["n"]]
    for r in shown[:15]:
        n_stop = r["n_stopped"]
        p(f"  {r[f'mean_{spec.metric}']:8.4g} +- {r[f'sd_{spec.metric}']:<7.3g} n={r['n']}"
          f"{f' ({n_stop} stopped)' if n_stop else ''}  {r['configuration']}")
    if len(shown) > 15:
        p(f"  ... {len(shown) - 15} more")


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else _inline(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _inline(d: Any) -> str:
    return json.dumps(d, default=str, separators=(", ", ": "))


def _label(config: dict) -> str:
    """A configuration as people read it: sampled floats to 4 significant digits (``0.00963``, not
    ``0.009630729820027304``); the exact values stay in their own columns and in MLflow."""
    return _inline({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in config.items()})
