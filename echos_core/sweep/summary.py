"""What a sweep prints: the resolved spec (``--dry-run``) and the summary at the end."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from typing import Any, Optional, TextIO

from ..tracking import (TAG_BEST_CHECKPOINT, TAG_BEST_RUN_ID, TAG_BEST_TRIAL_ID, TAG_N_ASHA_STOPPED, TAG_N_ERRORS,
                        TAG_N_TRIALS, TAG_WALL_S, best_metric_tag)
from .analysis_spec import power_lines, resolve_pilot_sd
from .spec import SweepSpec, base_value
from .trainable import sampled_values, trial_outcome

__all__ = ["describe_spec", "summarise"]


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


def summarise(spec: SweepSpec, results, wall: float, tracking_uri: str, sweep_id: str,
              parent_run_id: str, out: TextIO) -> dict:
    """Print the end of a sweep (counts, best trial and its checkpoint, per-configuration means over
    seeds, where to look in MLflow) from Tune's ``ResultGrid``; return tags for the parent run."""
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
    tags = {TAG_N_TRIALS: len(rows), TAG_N_ASHA_STOPPED: n_stop, TAG_N_ERRORS: n_err,
            TAG_WALL_S: round(wall, 1)}

    ok = [r for r in rows if not r["error"] and _finite(r["metrics"].get(spec.metric))]
    if ok:
        sign = 1 if spec.mode == "max" else -1
        best = max(ok, key=lambda r: sign * r["metrics"][spec.metric])
        res, m = best["result"], best["metrics"]
        # a data-parallel trial's checkpoints are its Ray Train run's (TuneReportCallback names them)
        ckpt = res.checkpoint.path if res.checkpoint is not None else res.metrics.get("checkpoint_path", "(none)")
        p(f"best trial {m.get('trial_id')}: {spec.metric} {m[spec.metric]:.4g} at epoch {m.get('epoch')}"
          f"/{m.get('max_epochs')}{' (stopped early)' if best['stopped'] else ''}, seed {m.get('seed')}, "
          f"config {_inline(best['config'])}")
        p(f"  checkpoint: {ckpt}")
        p(f"  mlflow run: {m.get('mlflow_run_id')}")
        tags.update({TAG_BEST_TRIAL_ID: m.get("trial_id"), TAG_BEST_RUN_ID: m.get("mlflow_run_id"),
                     best_metric_tag(spec.metric): m[spec.metric], TAG_BEST_CHECKPOINT: ckpt})
        if len(spec.seeds) > 1:
            _print_by_config(spec, ok, p)
    else:
        p("no trial reported a finite " + spec.metric)
    p(f"MLflow: {tracking_uri}, experiment {spec.experiment!r}, sweep parent run {parent_run_id}")
    p(f"  open it: echos ui --backend-store-uri {tracking_uri}"
      if not tracking_uri.startswith("http") else f"  open it: {tracking_uri}")
    return tags


def _print_by_config(spec: SweepSpec, rows: list[dict], p) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[_inline(r["config"])].append(r)
    sign = 1 if spec.mode == "max" else -1
    stats = []
    for key, rs in groups.items():
        vals = [r["metrics"][spec.metric] for r in rs]
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        stats.append((statistics.fmean(vals), sd, len(vals), sum(r["stopped"] for r in rs), key))
    stats.sort(key=lambda s: -sign * s[0])
    p(f"by configuration ({spec.metric} at each trial's last epoch, mean +- sd over seeds; "
      "ASHA-stopped trials count at the epoch they stopped):")
    for mean, sd, n, n_stop, key in stats[:15]:
        p(f"  {mean:8.4g} +- {sd:<7.3g} n={n}{f' ({n_stop} stopped)' if n_stop else ''}  {key}")
    if len(stats) > 15:
        p(f"  ... {len(stats) - 15} more")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _inline(d: Any) -> str:
    return json.dumps(d, default=str, separators=(", ", ": "))
