"""``report.md``: what was run, the tables, and a conclusion written from the numbers by fixed rules.

The rules (also printed in the report):

* when the spec declares an ``analysis:`` section, its primary result comes first and its secondaries
  are Holm-adjusted (:mod:`.declared`); every other table is exploratory;
* a paired difference is called higher / lower only when its Holm-adjusted p (one family: every
  paired comparison of the report) is below 0.05; otherwise "not resolved at n=<pairs>", with the
  difference the pairs could have detected at 80% power.  Non-significance is never "no effect";
* fewer than 2 pairs: no claim; means are never ranked;
* only complete trials count; ASHA-stopped trials are counted in the tables, never in a claim.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import pandas as pd

from .declared import render_declared
from .design import min_detectable_difference
from .stats import CONFIDENCE, _fmt, _is_number, _sort_value, lower_is_better

if TYPE_CHECKING:
    from .result import Report

__all__ = ["render_report", "verdict"]

_ALPHA = 1 - CONFIDENCE


def _num(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _ci(lo: Any, hi: Any, digits: int = 2) -> str:
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return "–"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def verdict(row: pd.Series | dict, metric: str = "val_top1") -> tuple[str, bool]:
    """``(text, claimed)`` for one paired comparison, by the report's rules."""
    n = int(row["n_pairs"])
    if n < 2:
        return f"too few pairs (n={n}): no claim", False
    lo, mean, p_holm = row["ci_low"], row["mean_diff"], row.get("p_holm", math.nan)
    if isinstance(lo, float) and math.isnan(lo):
        return f"no interval (n={n}): no claim", False
    if isinstance(p_holm, float) and p_holm < _ALPHA:
        higher = mean > 0
        better = higher != lower_is_better(metric)
        return f"{'higher' if higher else 'lower'} ({'better' if better else 'worse'})", True
    mdd = min_detectable_difference(float(row["sd_diff"]), n)
    return f"not resolved at n={n} (detectable: {mdd:.2f})", False


def _values(trials: pd.DataFrame, key: str, scheme: Optional[str] = None) -> str:
    if key not in trials.columns:
        return "–"
    t = trials if scheme is None else trials[trials["init.scheme"] == scheme]
    vals = [v for v in t[key].tolist() if not (isinstance(v, float) and math.isnan(v))]
    uniq = sorted(set(vals), key=_sort_value)
    if not uniq:
        return "–"
    if len(uniq) == 1:
        return f"`{_fmt(uniq[0])}`"
    if len(uniq) > 6 and all(_is_number(v) for v in uniq):
        return f"{len(uniq)} values in [{_fmt(min(uniq))}, {_fmt(max(uniq))}]"
    return ", ".join(f"`{_fmt(v)}`" for v in uniq)


def _hardware(trials: pd.DataFrame) -> str:
    parts = []
    for label, col in (("device", "device_name"), ("CUDA available", "cuda_available"), ("CPUs", "cpu_count"),
                       ("torch threads", "torch_threads")):
        vals = _unique(trials, col)
        if vals:
            parts.append(f"{label} {', '.join(vals)}")
    hosts = _unique(trials, "node_host") or _unique(trials, "hostname")
    if hosts:
        parts.append(f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
                     + (f" ({', '.join(hosts)})" if len(hosts) <= 4 else ""))
    return "; ".join(parts) or "not recorded in the run tags"


def _software(trials: pd.DataFrame) -> str:
    parts = [f"{name} {', '.join(_unique(trials, f'{name}_version'))}" for name in ("torch", "timm", "echos")
             if _unique(trials, f"{name}_version")]
    py = _unique(trials, "python")
    if py:
        parts.append(f"python {', '.join(py)}")
    return ", ".join(parts) or "not recorded in the run tags"


def _unique(trials: pd.DataFrame, col: str) -> list[str]:
    if col not in trials.columns:
        return []
    return sorted({str(v) for v in trials[col].tolist()
                   if v is not None and not (isinstance(v, float) and math.isnan(v))})


@dataclass
class _Doc:
    """A report being written: its lines, and the sentences its tables leave for the conclusion."""

    rep: "Report"
    metric: str
    d: int
    unit: str
    lines: list[str] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)
    nulls: list[str] = field(default_factory=list)
    trends: list[str] = field(default_factory=list)

    def w(self, line: str = "") -> None:
        self.lines.append(line)

    @property
    def has_dog(self) -> bool:
        t = self.rep.trials
        return "init.scheme" in t.columns and bool((t["init.scheme"] == "dog").any())

    @property
    def exploratory(self) -> str:
        return " (exploratory)" if self.rep.declared is not None else ""


def render_report(rep: "Report", figures: Sequence[str] = (), command: Optional[str] = None,
                  rerun_command: Optional[str] = None) -> str:
    metric = rep.runs.metric
    top = metric.startswith("val_top")
    doc = _Doc(rep, metric, 2 if top else 4, " points" if top else "")
    _header(doc, command, rerun_command)
    _what_was_run(doc)
    _per_arm(doc)
    _against_baselines(doc)
    _on_ratio(doc)
    _conclusion(doc)
    _rules(doc)
    _figures_and_files(doc, figures)
    return "\n".join(doc.lines)


def _header(doc: _Doc, command: Optional[str], rerun_command: Optional[str]) -> None:
    runs, w = doc.rep.runs, doc.w
    w(f"# Sweep report: `{runs.sweep}`")
    w("")
    if runs.from_csv:
        has_epochs = not runs.curves.empty
        w(f"Rebuilt from the CSV files in `{runs.from_csv}` alone (`trials.csv`"
          + (", `epochs.csv`" if has_epochs else "") + "), without the MLflow store."
          + ("" if has_epochs else " There is no `epochs.csv` for this sweep (its per-epoch metrics were not "
                                   "saved beside it and its MLflow store is not kept): no learning-curve or "
                                   "kernel-fraction figure can be drawn."))
    w((f"Experiment `{runs.experiment}` in `{runs.tracking_uri}`; s" if not runs.from_csv else "S") + "weep invocation"
      f"{'s' if len(runs.sweep_ids) > 1 else ''} {', '.join(f'`{s}`' for s in runs.sweep_ids) or '(untagged)'}"
      + (f" (of {len(runs.all_sweep_ids)} in this experiment: {', '.join(f'`{s}`' for s in runs.all_sweep_ids)})"
         if len(runs.all_sweep_ids) > 1 else "") + ".")
    w(f"Analysed metric: final `{doc.metric}` ({'lower' if lower_is_better(doc.metric) else 'higher'} is better). "
      f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.")
    w("")
    if command:
        w(f"- Regenerate this report: `{command}`")
    if rerun_command:
        w(f"- Rerun the sweep: `{rerun_command}`"
          + (" (the spec as run is an artifact of the sweep's parent run"
             f" `{runs.parents[0]['run_id']}`)" if runs.parents else ""))
    w("")
    if doc.rep.declared is not None:
        doc.lines += render_declared(doc.rep.declared, doc.metric)
    else:
        w("No analysis was declared in the spec (no `analysis:` section): every comparison below is exploratory.")
        w("")


def _counts(trials: pd.DataFrame) -> tuple[int, int, int]:
    """(trials, complete, stopped early by ASHA)."""
    return (len(trials), int(trials["complete"].astype(bool).sum()), int(trials["asha_stopped"].astype(bool).sum()))


def _what_was_run(doc: _Doc) -> None:
    rep, trials, w = doc.rep, doc.rep.trials, doc.w
    n, n_complete, n_stopped = _counts(trials)
    n_repeats = int(rep.arms["n_repeats"].sum()) if not rep.arms.empty else 0
    pp = rep.runs.parents[0]["params"] if rep.runs.parents else {}
    w("## What was run")
    w("")
    w(f"- **Trials**: {n} ({n_complete} complete, {n_stopped} stopped early by ASHA, {n - n_complete - n_stopped} "
      f"failed or unfinished){f'; {n_repeats} repeats of a seed already counted were set aside' if n_repeats else ''}. "
      "ASHA-stopped trials are counted in the tables but excluded from every final-value claim.")
    w(f"- **Arms** (config minus seed): {len(rep.arms)}; varying keys: "
      f"{', '.join(f'`{k}`' for k in trials.attrs.get('arm_keys', [])) or '(none)'}.")
    how = [f"{k} `{pp[key]}`" for k, key in (("search", "search.algorithm"), ("scheduler", "scheduler"))
           if key in pp]
    w(f"- **Seeds**: {_values(trials, 'seed')}{'; ' + ', '.join(how) if how else ''}.")
    w(f"- **Data**: {_values(trials, 'data.name')}, image size {_values(trials, 'data.image_size')}, "
      f"train limit {_values(trials, 'data.train_limit')}, val limit {_values(trials, 'data.val_limit')}. "
      "The validation split is the only held-out data: final values are reported, best-epoch values "
      "(in trials.csv) are selected on it and biased upwards.")
    w(f"- **Model**: {_values(trials, 'model.name')}, kernel size {_values(trials, 'model.kernel_size')} "
      f"(null = the model's own), dim {_values(trials, 'model.dim')}, depth {_values(trials, 'model.depth')}.")
    w(f"- **Training**: epochs {_values(trials, 'train.epochs')}, batch {_values(trials, 'train.batch_size')}, "
      f"lr {_values(trials, 'train.lr')}, weight decay {_values(trials, 'train.weight_decay')}, "
      f"steps per epoch cap {_values(trials, 'train.steps_per_epoch')}, device {_values(trials, 'train.device')}, "
      f"amp {_values(trials, 'train.amp')}.")
    w(f"- **Init schemes**: {_values(trials, 'init.scheme')}." + (_dog_settings(trials) if doc.has_dog else ""))
    w(f"- **Hardware**: {_hardware(trials)}.")
    w(f"- **Software**: {_software(trials)}.")
    revs = _unique(trials, "git_revision")
    dirty = any(r.endswith("-dirty") or r == "unknown" for r in revs)
    w(f"- **Git revision**: {', '.join(f'`{r}`' for r in revs) or 'unknown'}"
      + (" (**uncommitted changes or untracked package: the code that ran is not exactly recoverable**)"
         if dirty else "")
      + (" (**several revisions in one report**)" if len(revs) > 1 else "") + ".")
    w("")


def _dog_settings(trials: pd.DataFrame) -> str:
    return (f" DoG: on_ratio {_values(trials, 'init.on_ratio', 'dog')}, gamma in "
            f"[{_values(trials, 'init.gamma_low', 'dog')}, {_values(trials, 'init.gamma_high', 'dog')}], "
            f"**scale rule {_values(trials, 'init.scale', 'dog')}**, normalisation "
            f"{_values(trials, 'init.normalisation', 'dog')}, "
            f"fraction replaced {_values(trials, 'init.fraction', 'dog')}, "
            f"noise {_values(trials, 'init.noise', 'dog')}.")


def _per_arm(doc: _Doc) -> None:
    w, d = doc.w, doc.d
    w(f"## Final `{doc.metric}` per arm")
    w("")
    w(f"Final = `{doc.metric}` at the last epoch of a complete trial (all `train.epochs` run). "
      f"n = complete trials (one per seed); sd over seeds; {CONFIDENCE:.0%} CI = t-interval of the mean, "
      "t(0.975, n-1) sd/sqrt(n).")
    w("")
    rows = [[f"`{r.arm}`", r.n_trials, r.n_asha_stopped, r.n_incomplete, r.n, _num(r["mean"], d), _num(r.sd, d),
             _ci(r.ci_low, r.ci_high, d), r.seeds or "–"] for _, r in doc.rep.arms.iterrows()]
    doc.lines += _table(["arm", "trials", "ASHA-stopped", "failed/unfinished", "n", "mean", "sd", "95% CI", "seeds"],
                        rows)
    w("")


def _against_baselines(doc: _Doc) -> None:
    rep, trials, w = doc.rep, doc.rep.trials, doc.w
    w("## Paired differences against the baselines" + doc.exploratory)
    w("")
    w(f"d = arm − baseline per seed (same seed: same data subset and order; only the depthwise init differs), "
      f"over the seeds both completed, baseline run with the same non-init config. Mean, sd and {CONFIDENCE:.0%} "
      f"t-interval of the mean of d ({doc.unit.strip() or 'metric units'}); p = paired t-test; Holm = p adjusted "
      f"over all {rep.n_comparisons} comparisons in this report.")
    w("")
    for b in rep.baselines:
        if "init.scheme" not in trials.columns or not (trials["init.scheme"] == b).any():
            w(f"- baseline `{b}`: not run in this sweep.")
    if not rep.paired.empty:
        w("")
        doc.lines += _paired_table(rep.paired, "baseline", doc)
    elif doc.has_dog:
        w("- No DoG arm has a baseline arm with the same non-init config and shared seeds: no paired comparison.")
    w("")


def _on_ratio(doc: _Doc) -> None:
    rep, w = doc.rep, doc.w
    ref = rep.reference_on_ratio
    w("## The On/Off balance (`init.on_ratio`)" + doc.exploratory)
    w("")
    if not rep.contrasts.empty:
        w(f"Each DoG arm against the DoG arm that differs only in on_ratio = {ref:g} (the paper's 50/50), "
          "paired by seed.")
        w("")
        doc.lines += _paired_table(rep.contrasts, "reference", doc)
        w("")
    elif doc.has_dog:
        w(f"No paired contrast against on_ratio = {ref:g}: on_ratio was not varied, or {ref:g} was not run.")
        w("")
    if not rep.trend.empty:
        _trend_table(doc)
    elif doc.has_dog:
        w("No trend test: fewer than 2 on_ratio values (or 3 complete DoG trials) per context.")
        w("")


def _trend_table(doc: _Doc) -> None:
    d = doc.d
    doc.w("Regression of the final value on on_ratio over the complete DoG trials (each trial one point; seed "
          "effects left in the residual, so these intervals are conservative). Slope = change from all-Off (0) to "
          "all-On (1); curvature = the x² coefficient of a quadratic fit. Both describe the on_ratio values run: no "
          "optimum between or beyond them is read off the fit.")
    doc.w("")
    rows = []
    for _, r in doc.rep.trend.iterrows():
        rows.append([r.context, r.n, r.n_ratios, _num(r.slope, d), _ci(r.slope_ci_low, r.slope_ci_high, d),
                     _p(r.slope_p), _num(r.r2, 3), _num(r.curvature, d),
                     _ci(r.curvature_ci_low, r.curvature_ci_high, d), _p(r.curvature_p)])
        doc.trends.append(_trend_sentence(r, doc.metric, d, doc.unit))
    doc.lines += _table(["context", "trials", "ratios", "slope", "95% CI", "p", "R²", "curvature", "95% CI", "p"],
                        rows)
    doc.w("")


def _conclusion(doc: _Doc) -> None:
    rep, w = doc.rep, doc.w
    _, n_complete, n_stopped = _counts(rep.trials)
    family = rep.n_comparisons
    w("## Conclusion")
    w("")
    if rep.declared is not None:
        w(f"- The primary result (first section): {rep.declared.primary.verdict}. The lines below are exploratory.")
    if n_complete == 0:
        w("- No trial completed: there is no final value to compare. Nothing can be concluded.")
    for c in doc.claims:
        w(f"- {c}")
    if doc.nulls:
        w(f"- {'; '.join(doc.nulls)}.")
    for t in doc.trends:
        w(f"- {t}")
    if family > 1:
        w(f"- Multiple comparisons: {family} paired comparisons were made; a difference is claimed above only when "
          f"its Holm-adjusted p is below {_ALPHA:g} ({len(doc.claims)} of {family}).")
    small = rep.arms[(rep.arms["n"] > 0) & (rep.arms["n"] < 3)]
    if not small.empty:
        w(f"- {len(small)} arm{'s have' if len(small) != 1 else ' has'} fewer than 3 complete seeds: intervals are "
          "wide or missing, and a null result there says little. Run more seeds before drawing conclusions.")
    if n_stopped:
        w(f"- {n_stopped} trial{'s were' if n_stopped != 1 else ' was'} stopped early by ASHA and "
          f"{'are' if n_stopped != 1 else 'is'} not evidence about final {doc.metric}.")
    if not doc.claims and not doc.nulls and n_complete:
        w("- No paired comparison was possible; the per-arm table above is descriptive only.")
    w("")


def _rules(doc: _Doc) -> None:
    w = doc.w
    w("## Rules used")
    w("")
    w(f"- A paired difference is claimed (higher / lower) only when its Holm-adjusted p is below {_ALPHA:g} (one "
      "family: every paired comparison in these exploratory tables); otherwise \"not resolved at n=…\" with the "
      "difference detectable at 80% power. Not resolved is not \"no difference\" and never \"at least as good\". "
      "Fewer than 2 pairs: no claim. Means are not ranked.")
    w("- A declared `analysis:` (first section) has its own rules, stated there: primary unadjusted, secondaries "
      "Holm-adjusted, equivalence only by TOST within the declared margin.")
    w("- Only complete trials give final values; ASHA-stopped, failed and unfinished trials are counted, not used. "
      "One trial per (arm, seed): a repeated seed re-runs the same init and data order and is no new evidence.")
    w("- Arm = config minus seed, over the keys that vary; init keys a scheme does not read (e.g. on_ratio for "
      "kaiming) are ignored.")
    w("")


def _figures_and_files(doc: _Doc, figures: Sequence[str]) -> None:
    runs, w = doc.rep.runs, doc.w
    if figures:
        w("## Figures")
        w("")
        for f in figures:
            w(f"![{f[:-4]}]({f})")
            w("")
    w("## Files")
    w("")
    w("- `trials.csv`: one row per trial (run id, arm, seed, status, ASHA flag, epochs, final and best metrics, "
      "tags, every config key)" + ("" if runs.curves.empty else "; `epochs.csv`: every trial's metrics per epoch "
                                   "(run id, arm, seed, epoch, one column per metric)"))
    if doc.rep.declared is not None:
        w("- `analysis.yaml`: the declared analysis; `declared.csv`: its results (estimate, 95% CI, p, Holm p, "
          "TOST p, detectable difference, verdict)")
    w(f"- Rebuild every table and figure from these CSVs alone: `echos report --from-csv {runs.from_csv or '<this folder>'}`")
    w("- `arms.csv`: the per-arm table; `paired.csv`: every paired comparison (with Holm p)")
    w("")


def _sentence(r: pd.Series, text: str, claimed: bool, claims: list[str], nulls: list[str], d: int, unit: str) -> None:
    ci = _ci(r.ci_low, r.ci_high, d)
    if claimed:
        claims.append(f"`{r.arm}` is {text} than `{r.baseline}` by {abs(r.mean_diff):.{d}f}{unit} "
                      f"(95% CI of the difference {ci}, n={r.n_pairs} pairs, p={_p(r.p)}, Holm p={_p(r.p_holm)}).")
    elif int(r.n_pairs) >= 2:
        nulls.append(f"`{r.arm}` vs `{r.baseline}`: {text} (95% CI {ci}, Holm p={_p(r.p_holm)})")
    else:
        nulls.append(f"`{r.arm}` vs `{r.baseline}`: {text}")


def _trend_sentence(r: pd.Series, metric: str, d: int, unit: str) -> str:
    ctx = "" if r.context == "all" else f" ({r.context})"
    ci = _ci(r.slope_ci_low, r.slope_ci_high, d)
    if r.slope_ci_low > 0 or r.slope_ci_high < 0:
        s = (f"Exploratory, unadjusted: the linear fit across on_ratio{ctx} of final {metric} "
             f"{'rises' if r.slope > 0 else 'falls'} by {abs(r.slope):.{d}f}{unit} per unit of on_ratio over the values run (95% CI {ci}, n={r.n} trials).")
    else:
        s = (f"Exploratory, unadjusted: the linear trend across on_ratio{ctx} is not resolved at n={r.n} "
             f"(slope 95% CI {ci}).")
    if isinstance(r.curvature, float) and not math.isnan(r.curvature):
        cci = _ci(r.curvature_ci_low, r.curvature_ci_high, d)
        if r.curvature_ci_low > 0 or r.curvature_ci_high < 0:
            s += (f" The quadratic fit is {'concave' if r.curvature < 0 else 'convex'} over the values run "
                  f"(curvature 95% CI {cci}); where an optimum lies is not read off it: only the arms run are compared.")
        else:
            s += f" Curvature not resolved (95% CI {cci})."
    return s


def _paired_table(frame: pd.DataFrame, against: str, doc: _Doc) -> list[str]:
    """Markdown table of paired comparisons (one row each); their conclusion sentences go to the doc's claims
    and nulls."""
    d, rows = doc.d, []
    for _, r in frame.iterrows():
        text, claimed = verdict(r, doc.metric)
        rows.append([f"`{r.arm}`", f"`{r.baseline}`", r.n_pairs, _num(r.mean_diff, d), _num(r.sd_diff, d),
                     _ci(r.ci_low, r.ci_high, d), _p(r.p), _p(r.p_holm), text])
        _sentence(r, text, claimed, doc.claims, doc.nulls, d, doc.unit)
    return _table(["arm", against, "pairs", "mean d", "sd d", "95% CI of d", "p", "p (Holm)", "verdict"], rows)
