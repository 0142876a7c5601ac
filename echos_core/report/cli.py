"""``echos report SWEEP``: a sweep's trials from MLflow -> ``results/<sweep>/`` (CSV, PNG, report.md).

pandas, scipy, matplotlib and MLflow are imported inside the command only.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Optional

from ..registry import baselines, scheme_names

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="summarise a sweep from MLflow: per-arm statistics, paired differences, figures, report.md",
        description="Read the trial runs of a sweep from the MLflow tracking store (or, with --from-csv, from the "
                    "CSVs of an earlier report) and write OUT/<sweep>/: trials.csv (one row per trial), epochs.csv "
                    "(every trial's metrics per epoch), arms.csv, paired.csv, PNG figures and report.md. With a "
                    "declared analysis (the spec's `analysis:` section, or --analysis) the primary result comes "
                    "first and every claim is worded by rule (better / worse / equivalent within ±m / not resolved "
                    "at n); the other tables are exploratory, Holm-adjusted. Trials stopped early by ASHA are "
                    "counted but never used for final-value claims.")
    p.add_argument("sweep", metavar="SWEEP", nargs="?",
                   help="sweep name (the spec's `name`, e.g. quick or quick-smoke), or the spec file itself "
                        "(sweeps/quick.yaml); leave out with --from-csv")
    p.add_argument("--from-csv", metavar="DIR", help="rebuild the report from DIR/trials.csv (and DIR/epochs.csv) "
                                                     "alone, without MLflow; written into DIR unless --out is given; "
                                                     "the declared analysis is DIR/analysis.yaml when present")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default: the spec's, else "
                                                         "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the sweep's, i.e. its name)")
    p.add_argument("--sweep-id", metavar="ID", help="which invocation of the sweep (default: the newest; "
                                                    "'all' pools every invocation, one trial per arm and seed)")
    p.add_argument("--out", "-o", metavar="DIR", help="parent folder (default results/); the report goes to "
                                                      "DIR/<sweep>/")
    p.add_argument("--baselines", nargs="+", metavar="SCHEME", default=list(baselines()),
                   help=f"init schemes every DoG arm is compared with (default: {' '.join(baselines())})")
    p.add_argument("--metric", default="val_top1", help="metric compared at the final epoch (default val_top1; "
                                                        "lower is better for *loss*)")
    p.add_argument("--reference-on-ratio", type=float, default=0.5, metavar="R",
                   help="on_ratio every DoG arm is also paired against (default 0.5, the paper's 50/50)")
    p.add_argument("--analysis", metavar="FILE", help="the declared analysis: a sweep spec (its `analysis:` "
                                                      "section) or the analysis.yaml beside an earlier report "
                                                      "(default: SWEEP's spec when SWEEP is a spec file, else the "
                                                      "spec logged with the sweep in MLflow)")
    p.set_defaults(func=_cmd_report)

    o = sub.add_parser(
        "other-kernels", help="what the kernels that are neither On nor Off are, after training",
        description="For every finished trial in a Ray sweep folder: rebuild the exact initial weights, label the "
                    "trained depthwise kernels On/Off/other, fit shape families (DoG, Gaussian derivatives, "
                    "edges) to the other ones against an i.i.d.-noise chance level, and measure how far training "
                    "moved them from their init. Writes kernels.csv, summary.csv, summary.md and mosaics.")
    o.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep name (its newest folder in ray_results/) or the sweep's Ray folder itself")
    o.add_argument("--out", "-o", metavar="DIR", default="results/other_kernels", help="output folder")
    o.set_defaults(func=_cmd_other_kernels)


def _cmd_other_kernels(args) -> int:
    from ..validation import check_writable
    from .other_kernels import write_other_kernels

    check_writable("--out", args.out)

    out = write_other_kernels(args.sweep_dir, args.out)
    print((out / "summary.md").read_text())
    return 0


def _spec_target(sweep: str) -> Optional[Path]:
    """The spec file when SWEEP names one (ends in .yaml / .yml)."""
    if sweep.endswith((".yaml", ".yml")):
        return Path(sweep)
    return None


def _cmd_report(args: argparse.Namespace) -> int:
    from ..tracking import resolve_tracking_uri
    from .load import ReportError

    unknown = [b for b in args.baselines if b not in scheme_names()]
    if unknown:
        raise ReportError(f"--baselines {' '.join(unknown)}: unknown init scheme; known: {', '.join(scheme_names())}")
    if not 0.0 <= args.reference_on_ratio <= 1.0:
        raise ReportError(f"--reference-on-ratio={args.reference_on_ratio}: must be in [0, 1]")

    if (args.sweep is None) == (args.from_csv is None):
        raise ReportError("SWEEP: give a sweep name or spec, or --from-csv DIR (exactly one)")
    if args.out:
        from ..validation import check_writable

        check_writable("--out", args.out)
    if args.from_csv:
        return _report_from_csv(args)
    name, experiment, spec_uri, spec_path = args.sweep, args.experiment, None, _spec_target(args.sweep)
    analysis = None
    if spec_path is not None:
        from ..sweep.spec import load_spec

        if not spec_path.is_file():
            raise ReportError(f"SWEEP {args.sweep}: no such spec file (give a sweep name or an existing spec)")
        spec = load_spec(spec_path)
        name, experiment, spec_uri = spec.name, experiment or spec.experiment, spec.tracking_uri
        analysis = spec.analysis
    if args.analysis:
        analysis = load_analysis(args.analysis)
    tracking_uri = resolve_tracking_uri(args.tracking_uri or spec_uri)
    from ..sweep.preflight import check_tracking

    check_tracking(tracking_uri, "--tracking-uri" if args.tracking_uri else "mlflow.tracking_uri", write=False)

    from .build import build_report
    from .load import load_sweep

    runs = load_sweep(tracking_uri, name, experiment, sweep_id=args.sweep_id, metric=args.metric)
    if analysis is None and spec_path is None:
        analysis = _logged_analysis(runs)  # the analysis: section of the spec the sweep ran with, if it had one
    out_dir = Path(args.out or "results") / name
    rep = build_report(runs, out_dir, baselines=args.baselines, reference_on_ratio=args.reference_on_ratio,
                       command=_regenerate_command(args), rerun_command=_rerun_command(args, name, runs),
                       analysis=analysis)
    _print_summary(rep, runs, name, args.metric)
    return 0


def _report_from_csv(args: argparse.Namespace) -> int:
    from .build import build_report
    from .csv_source import load_csv
    from .load import ReportError

    for opt in ("tracking_uri", "experiment", "sweep_id"):
        if getattr(args, opt):
            raise ReportError(f"--{opt.replace('_', '-')}: does not apply with --from-csv (no MLflow store is read)")
    folder = Path(args.from_csv)
    runs = load_csv(folder, args.metric)
    analysis = load_analysis(args.analysis) if args.analysis else \
        (load_analysis(folder / "analysis.yaml") if (folder / "analysis.yaml").is_file() else None)
    out_dir = Path(args.out) / runs.sweep if args.out else folder
    rerun = _rerun_command(args, runs.sweep)
    rep = build_report(runs, out_dir, baselines=args.baselines, reference_on_ratio=args.reference_on_ratio,
                       command=_regenerate_command(args), rerun_command=rerun, analysis=analysis)
    _print_summary(rep, runs, runs.sweep, args.metric)
    return 0


def _print_summary(rep, runs, name: str, metric: str) -> None:
    n_claims = sum(1 for _, r in rep.paired.iterrows() if _claimed(r, metric))
    which = runs.sweep_ids[0] if len(runs.sweep_ids) == 1 else f"{len(runs.sweep_ids)} invocations"
    print(f"report of sweep {name} ({len(runs.trials)} trials, {len(rep.arms)} arms, {which}): "
          f"{len(rep.paired)} paired comparisons against baselines, {n_claims} claimed after Holm")
    if rep.declared is not None:
        p = rep.declared.primary
        print(f"primary: {p.label}: {p.verdict} ({p.estimate:+.2f}, 95% CI [{p.ci_low:+.2f}, {p.ci_high:+.2f}])")
    for f in rep.files:
        print(f"wrote {f}")


def load_analysis(path: str | Path):
    """The declared analysis in ``path``: a sweep spec's ``analysis:`` section, or an ``analysis.yaml``."""
    from ..sweep.analysis_spec import analysis_from_dict
    from ..sweep.spec import load_spec
    from ..validation import load_yaml
    from .load import ReportError

    p = Path(path)
    if not p.is_file():
        raise ReportError(f"--analysis {path}: no such file")
    data = load_yaml(p, "--analysis")
    if isinstance(data, dict) and "base" in data:  # a sweep spec
        an = load_spec(p).analysis
        if an is None:
            raise ReportError(f"--analysis {path}: the spec has no `analysis:` section")
        return an
    return analysis_from_dict(data)


def _claimed(row, metric: str) -> bool:
    from .markdown import verdict

    return verdict(row, metric)[1]


def _regenerate_command(args: argparse.Namespace) -> str:
    parts = ["echos", "report", args.sweep] if args.sweep else ["echos", "report", "--from-csv", args.from_csv]
    if args.tracking_uri:
        parts += ["--tracking-uri", args.tracking_uri]
    if args.experiment:
        parts += ["--experiment", args.experiment]
    if args.sweep_id:
        parts += ["--sweep-id", args.sweep_id]
    if args.out and args.out != "results":
        parts += ["--out", args.out]
    if list(args.baselines) != list(baselines()):
        parts += ["--baselines", *args.baselines]
    if args.metric != "val_top1":
        parts += ["--metric", args.metric]
    if args.reference_on_ratio != 0.5:
        parts += ["--reference-on-ratio", f"{args.reference_on_ratio:g}"]
    if args.analysis:
        parts += ["--analysis", args.analysis]
    return shlex.join(parts)


def _rerun_command(args: argparse.Namespace, name: str, runs=None) -> str:
    """``echos sweep <spec>``: the spec given, else the one spec under ./sweeps/ of that name, else
    sweeps/<the spec file logged on the parent run>, else sweeps/<name>.yaml."""
    spec = _spec_target(args.sweep) if args.sweep else None
    smoke = False
    if spec is None:
        base = name
        if name.endswith("-smoke"):  # echos sweep --smoke-test names its sweep <name>-smoke
            base, smoke = name[: -len("-smoke")], True
        logged = _logged_spec_name(runs) if runs is not None else None
        spec = _spec_named(base) or Path("sweeps") / (logged or f"{base}.yaml")
    parts = ["echos", "sweep", str(spec)] + (["--smoke-test"] if smoke else [])
    if args.tracking_uri:
        parts += ["--tracking-uri", args.tracking_uri]
    return shlex.join(parts)


def _spec_named(name: str) -> Optional[Path]:
    """The one spec file under ./sweeps/ (any depth) whose ``name`` is ``name``; None if none or several."""
    import yaml

    found = []
    for path in sorted(Path("sweeps").rglob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("name") == name:
            found.append(path)
    return found[0] if len(found) == 1 else None


def _logged_spec_name(runs) -> Optional[str]:
    """File name of the spec the sweep driver logged as an artifact of its parent run, if any."""
    if not runs.parents:
        return None
    try:
        from ..tracking import mlflow_client

        arts = mlflow_client(runs.tracking_uri).list_artifacts(runs.parents[-1]["run_id"])
    except Exception:  # artifacts are a convenience here, never a reason to fail the report
        return None
    names = [a.path for a in arts if not a.is_dir and a.path.endswith((".yaml", ".yml"))]
    return names[0] if len(names) == 1 else None


def _logged_analysis(runs):
    """The declared analysis in the spec logged with the sweep's parent run (None when there is none)."""
    name = _logged_spec_name(runs)
    if name is None:
        return None
    try:
        import yaml
        from mlflow.artifacts import download_artifacts

        from ..sweep.analysis_spec import analysis_from_dict

        local = download_artifacts(run_id=runs.parents[-1]["run_id"], artifact_path=name,
                                   tracking_uri=runs.tracking_uri)
        section = (yaml.safe_load(Path(local).read_text()) or {}).get("analysis")
        return analysis_from_dict(section) if section else None
    except Exception:  # artifacts are a convenience here, never a reason to fail the report
        return None
