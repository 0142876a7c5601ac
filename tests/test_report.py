"""``echos report``: a fake sweep logged to a SQLite MLflow store, read back, checked against hand arithmetic."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from echos_core.cli import main
from echos_core.config import config_from_dict, config_to_dict
from echos_core.report import (arm_summary, assign_arms, final_values, holm, on_ratio_contrasts, on_ratio_trend,
                               paired_differences, t_interval)
from echos_core.report.design import min_detectable_difference
from echos_core.tracking import MlflowRun

REPO = Path(__file__).resolve().parents[1]
SWEEP = "fake"
SWEEP_ID = "fake-20250101-000000"
EPOCHS = 3
# Final val_top1 (epoch 3) per arm and seed 0, 1, 2: chosen numbers, checked by hand below.
FINAL = {
    ("dog", 0.0): [60.0, 62.0, 61.0],
    ("dog", 0.5): [63.0, 64.5, 62.0],
    ("dog", 1.0): [61.0, 63.0, 60.5],
    ("kaiming", None): [60.0, 61.0, 60.5],
    ("default", None): [59.0, 61.5, 60.0],
}
# kaiming/default trials carry a sampled on_ratio they never use (as an Optuna sweep over both writes).
UNUSED_RATIO = {0: 0.13, 1: 0.77, 2: 0.42}
STOPPED_FINAL = 40.0  # dog on_ratio=0.5, seed 3, stopped by ASHA after epoch 1


def _config(scheme, ratio, seed):
    cfg = {"model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
           "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
           "init": {"scheme": scheme, "on_ratio": ratio if ratio is not None else UNUSED_RATIO[seed]},
           "train": {"epochs": EPOCHS, "batch_size": 16, "lr": 3e-3, "device": "cpu", "threads": 1 + seed % 2},
           "seed": seed}
    return config_to_dict(config_from_dict(cfg))


def _log_trial(uri, parent_id, scheme, ratio, seed, final, epochs, stopped, n):
    tags = {"echos.sweep": SWEEP, "echos.sweep_id": SWEEP_ID, "echos.trial_id": f"t_{n:05d}",
            "echos.seed": seed, "echos.status": "stopped" if stopped else "finished",
            "echos.asha_stopped": "true" if stopped else "false", "echos.git_revision": "abc123",
            "echos.device_name": "x86_64", "echos.cuda_available": "False", "echos.torch_version": "2.x"}
    params = {**_config(scheme, ratio, seed), "arm": {"init": f"{scheme}-{ratio}"}}  # as a sweep with arms logs
    with MlflowRun(uri, SWEEP, f"trial-{n}", params, tags, parent_run_id=parent_id) as run:
        for e in range(1, epochs + 1):
            m = {"epoch": e, "val_top1": final - 5.0 * (epochs - e), "val_loss": 2.0 - 0.1 * e,
                 "train_loss": 2.1 - 0.1 * e}
            if scheme == "dog":
                on = ratio if ratio is not None else 0.5
                m.update({"kernels/on_fraction": on * 0.8, "kernels/off_fraction": (1 - on) * 0.8,
                          "kernels/other_fraction": 0.2})
            run.log_epoch(m)
    return run.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (MLflow's schema set-up is the slow part)."""
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    with MlflowRun(uri, SWEEP, SWEEP_ID, {"search.algorithm": "grid"},
                   {"echos.sweep": SWEEP, "echos.sweep_id": SWEEP_ID, "echos.role": "sweep"}) as parent:
        pass
    n = 0
    for (scheme, ratio), finals in FINAL.items():
        for seed, final in enumerate(finals):
            _log_trial(uri, parent.run_id, scheme, ratio, seed, final, EPOCHS, False, n)
            n += 1
    stopped_id = _log_trial(uri, parent.run_id, "dog", 0.5, 3, STOPPED_FINAL, 1, True, n)
    # A run of another sweep in another experiment: must not leak into the report.
    with MlflowRun(uri, "other", "x", {"seed": 0}, {"echos.sweep": "other", "echos.trial_id": "o"}):
        pass
    return {"uri": uri, "dir": d, "stopped_id": stopped_id}


@pytest.fixture(scope="module")
def report_dir(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert main(["report", SWEEP, "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    return out / SWEEP


# --------------------------------------------------------------------------- end to end on the fake sweep


def test_files_written_and_images_valid(report_dir):
    from matplotlib.image import imread

    for name in ("trials.csv", "arms.csv", "paired.csv", "report.md", "accuracy_vs_on_ratio.png",
                 "learning_curves.png", "cluster_fractions.png"):
        assert (report_dir / name).is_file(), name
    # gamma and kernel size did not vary: no figure against them
    assert not (report_dir / "accuracy_vs_gamma.png").exists()
    assert not (report_dir / "accuracy_vs_kernel_size.png").exists()
    for png in report_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # something was drawn


def _drawn(monkeypatch, plot, *args, **kwargs):
    """The matplotlib figure ``plot`` draws (captured as it is saved)."""
    from echos_core.report import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or save(fig, path))
    plot(*args, **kwargs)
    return figs[0]


def test_accuracy_vs_on_ratio_draws_the_arm_means_and_the_baselines(report_dir, monkeypatch, tmp_path):
    from echos_core.report.plots import plot_metric_vs

    trials = pd.read_csv(report_dir / "trials.csv").drop(columns=["arm"])
    (ax,) = _drawn(monkeypatch, plot_metric_vs, trials, ["init.on_ratio"], tmp_path / "a.png").axes
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    dog = lines["dog: mean ± 95% CI"]
    assert dog.get_xdata().tolist() == [0.0, 0.5, 1.0]
    # the complete trials only: the ASHA-stopped seed 3 of on_ratio 0.5 (40.0) is not in the mean
    assert dog.get_ydata() == pytest.approx([np.mean(FINAL[("dog", r)]) for r in (0.0, 0.5, 1.0)])
    for scheme in ("kaiming", "default"):  # baselines: a horizontal line at their mean
        (label,) = [k for k in lines if k.startswith(f"{scheme}: mean")]
        assert lines[label].get_ydata() == pytest.approx([np.mean(FINAL[(scheme, None)])] * 2)
    from matplotlib.collections import PathCollection

    points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(points) == sorted(v for vals in FINAL.values() for v in vals)  # every seed, baselines too


def test_learning_curves_draw_the_mean_curve_per_arm(report_dir, store, monkeypatch, tmp_path):
    from echos_core.report import load_sweep
    from echos_core.report.plots import plot_learning_curves

    runs = load_sweep(store["uri"], SWEEP)
    trials = assign_arms(runs.trials)
    fig = _drawn(monkeypatch, plot_learning_curves, trials, runs.curves, tmp_path / "c.png", "val_top1")
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    kai = lines["kaiming: mean of 3 seeds (thin: each)"]
    assert kai.get_xdata().tolist() == [1, 2, 3]
    final = np.mean(FINAL[("kaiming", None)])  # the logged curve is final - 5 * (EPOCHS - epoch)
    assert kai.get_ydata() == pytest.approx([final - 10.0, final - 5.0, final])


def test_trials_csv_one_row_per_trial_with_asha_flag(report_dir, store):
    t = pd.read_csv(report_dir / "trials.csv")
    assert len(t) == 16  # 15 complete + 1 ASHA-stopped; the other experiment's run is not there
    assert {"run_id", "arm", "seed", "status", "asha_stopped", "complete", "epochs_completed", "final_val_top1",
            "best_val_top1", "init.on_ratio", "model.name", "train.epochs"} <= set(t.columns)
    stopped = t[t["run_id"] == store["stopped_id"]].iloc[0]
    assert bool(stopped["asha_stopped"]) and not bool(stopped["complete"])
    assert stopped["epochs_completed"] == 1 and stopped["final_val_top1"] == STOPPED_FINAL
    assert t["complete"].sum() == 15
    # kaiming/default ignore the on_ratio the search sampled for them: one arm each
    assert set(t["arm"]) == {"dog on_ratio=0", "dog on_ratio=0.5", "dog on_ratio=1", "kaiming", "default"}
    # train.threads varies too, but is bookkeeping, never part of an arm
    assert not any("threads" in a for a in t["arm"])


def test_arm_mean_sd_and_ci_by_hand_and_asha_excluded(report_dir):
    arms = pd.read_csv(report_dir / "arms.csv").set_index("arm")
    a = arms.loc["dog on_ratio=0.5"]
    assert a["n_trials"] == 4 and a["n_asha_stopped"] == 1 and a["n"] == 3  # counted, not used
    x = [63.0, 64.5, 62.0]
    mean = (63.0 + 64.5 + 62.0) / 3
    sd = math.sqrt(((63.0 - mean) ** 2 + (64.5 - mean) ** 2 + (62.0 - mean) ** 2) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert a["mean"] == pytest.approx(mean, abs=1e-9)  # 63.1667, not dragged down by the stopped 40.0
    assert a["sd"] == pytest.approx(sd, abs=1e-9)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
    assert a["min"] == min(x) and a["max"] == max(x)
    k = arms.loc["kaiming"]
    assert k["n"] == 3 and k["mean"] == pytest.approx(60.5) and k["sd"] == pytest.approx(0.5)


def test_paired_difference_by_hand(report_dir):
    p = pd.read_csv(report_dir / "paired.csv")
    row = p[(p["arm"] == "dog on_ratio=0.5") & (p["baseline"] == "kaiming")].iloc[0]
    d = [63.0 - 60.0, 64.5 - 61.0, 62.0 - 60.5]  # 3.0, 3.5, 1.5
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    se = sd / math.sqrt(3)
    half = stats.t.ppf(0.975, 2) * se
    t_stat = mean / se
    assert row["n_pairs"] == 3 and row["seeds"] == "0 1 2"
    assert row["mean_diff"] == pytest.approx(8.0 / 3, abs=1e-9)
    assert row["sd_diff"] == pytest.approx(sd, abs=1e-9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
    assert row["ci_low"] > 0  # CI excludes 0: a claim
    assert row["t"] == pytest.approx(t_stat, abs=1e-9)
    assert row["p"] == pytest.approx(2 * stats.t.sf(t_stat, 2), abs=1e-9)
    # one Holm family: 3 DoG arms x 2 baselines + 2 contrasts against on_ratio=0.5
    assert len(p) == 8 and (p["kind"] == "vs baseline").sum() == 6
    assert row["p_holm"] >= row["p"]
    assert row["p_holm"] == pytest.approx(holm(p["p"].to_numpy())[row.name])


def test_report_md_states_rules_numbers_and_commands(report_dir, store):
    md = (report_dir / "report.md").read_text()
    assert f"echos report {SWEEP} --tracking-uri {store['uri']}" in md
    assert f"echos sweep sweeps/{SWEEP}.yaml" in md
    assert "16 (15 complete, 1 stopped early by ASHA, 0 failed or unfinished)" in md
    # dog 0.5 vs kaiming: CI [0.08, 5.25] excludes 0, but not after Holm over the 8 comparisons: no claim
    p = pd.read_csv(report_dir / "paired.csv")
    row = p[(p["arm"] == "dog on_ratio=0.5") & (p["baseline"] == "kaiming")].iloc[0]
    assert row["p"] < 0.05 < row["p_holm"]
    mdd = min_detectable_difference(row["sd_diff"], 3)
    assert f"`dog on_ratio=0.5` vs `kaiming`: not resolved at n=3 (detectable: {mdd:.2f}) (95% CI [0.08, 5.25]" in md
    assert "is higher (better)" not in md and "is at least as good" not in md
    # dog 0 vs kaiming: d = 0, 1, 0.5 -> CI [-0.74, 1.74] includes 0
    assert "`dog on_ratio=0` vs `kaiming`: not resolved at n=3" in md
    assert "Descriptively, the best" not in md and "optimum near" not in md  # no ranking, no vertex
    assert "No analysis was declared in the spec" in md
    assert "scale rule `unit`" in md and "`abc123`" in md
    assert "![accuracy_vs_on_ratio](accuracy_vs_on_ratio.png)" in md


def test_sweep_given_as_its_spec_file(store, tmp_path):
    """SWEEP may be the spec: name, experiment and tracking URI come from it, and it is the rerun command."""
    import yaml

    spec = yaml.safe_load((REPO / "sweeps" / "quick.yaml").read_text())
    spec.update(name=SWEEP, mlflow={"tracking_uri": store["uri"], "experiment": SWEEP})
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["report", str(path), "--out", str(tmp_path / "out"), "--baselines", "kaiming"]) == 0
    md = (tmp_path / "out" / SWEEP / "report.md").read_text()
    assert f"echos sweep {path}" in md and "--baselines kaiming" in md
    assert len(pd.read_csv(tmp_path / "out" / SWEEP / "paired.csv")) == 3 + 2  # 3 vs kaiming, 2 vs on_ratio=0.5


# --------------------------------------------------------------------------- the statistics as plain functions


def _frame(rows):
    base = {"complete": True, "asha_stopped": False, "init.on_ratio": 0.5, "train.lr": 0.01}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_holm_by_hand():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06; NaN ignored (m = 4)
    out = holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert out[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(out[4])
    assert holm([0.3, 0.02]) == pytest.approx([0.3, 0.04])  # 0.02*2; then max(0.04, 0.3*1)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 0.8*2 capped at 1; monotone


def test_params_parse_back_as_written():
    from echos_core.report import parse_param
    from echos_core.tracking import param_value

    for v in (None, True, False, 5, 0.5, 1e-3, "convmixer", "rand-m9-mstd0.5"):
        assert parse_param(param_value(v)) == v


def test_t_interval_small_n():
    n, mean, *rest = t_interval([1.0])
    assert (n, mean) == (1, 1.0) and all(math.isnan(v) for v in rest)
    n, mean, sd, lo, hi = t_interval([1.0, 3.0])
    assert (n, mean, sd) == (2, 2.0, pytest.approx(math.sqrt(2)))
    assert hi - mean == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))


def test_pairs_only_within_the_same_non_init_config_and_one_trial_per_seed():
    rows = []
    for lr in (0.01, 0.02):
        for seed in (0, 1, 2):
            rows.append({"init.scheme": "dog", "seed": seed, "train.lr": lr, "final_val_top1": 70 + seed + 100 * lr,
                         "start_time": seed})
            rows.append({"init.scheme": "kaiming", "seed": seed, "train.lr": lr, "final_val_top1": 69 + seed,
                         "start_time": seed})
    # a repeat of seed 0 (newer) for dog lr=0.01: replaces, does not add
    rows.append({"init.scheme": "dog", "seed": 0, "train.lr": 0.01, "final_val_top1": 80.0, "start_time": 99})
    t = assign_arms(_frame(rows))
    assert set(t["arm"]) == {"dog lr=0.01", "dog lr=0.02", "kaiming lr=0.01", "kaiming lr=0.02"}
    p = paired_differences(t, "kaiming").set_index("arm")
    assert list(p.loc["dog lr=0.01", ["baseline"]]) == ["kaiming lr=0.01"]  # never across learning rates
    assert len(p) == 2
    # lr=0.01: d = 80-69, 71+1-70, 72+1-71 = 11, 2, 2
    assert p.loc["dog lr=0.01", "mean_diff"] == pytest.approx(5.0)
    assert p.loc["dog lr=0.02", "mean_diff"] == pytest.approx(3.0) and math.isnan(p.loc["dog lr=0.02", "p"])
    s = arm_summary(t).set_index("arm")
    assert s.loc["dog lr=0.01", "n"] == 3 and s.loc["dog lr=0.01", "n_repeats"] == 1
    assert len(final_values(t)) == 12


def test_trend_slope_by_hand_and_contrasts():
    x, y = [], []
    for r, vals in ((0.0, [60, 62, 61]), (0.5, [63, 64.5, 62]), (1.0, [61, 63, 60.5])):
        x += [r] * 3
        y += vals
    rows = [{"init.scheme": "dog", "init.on_ratio": r, "seed": i % 3, "final_val_top1": v}
            for i, (r, v) in enumerate(zip(x, y))]
    t = assign_arms(_frame(rows))
    tr = on_ratio_trend(t).iloc[0]
    xm, ym = sum(x) / 9, sum(y) / 9
    slope = sum((a - xm) * (b - ym) for a, b in zip(x, y)) / sum((a - xm) ** 2 for a in x)
    assert tr["n"] == 9 and tr["n_ratios"] == 3
    assert tr["slope"] == pytest.approx(slope)  # (61.5 - 61) / 1 = 0.5
    assert tr["slope_ci_low"] < 0 < tr["slope_ci_high"]
    # the middle is highest: the parabola opens downwards with its vertex inside [0, 1]
    assert tr["curvature"] < 0 and 0 < tr["optimum"] < 1
    coef = np.polyfit(x, y, 2)
    assert tr["curvature"] == pytest.approx(coef[0]) and tr["optimum"] == pytest.approx(-coef[1] / (2 * coef[0]))
    c = on_ratio_contrasts(t, 0.5).set_index("arm")
    assert set(c.index) == {"dog on_ratio=0", "dog on_ratio=1"}
    assert c.loc["dog on_ratio=0", "mean_diff"] == pytest.approx((60 - 63 + 62 - 64.5 + 61 - 62) / 3)


def test_gamma_and_kernel_size_sweep_pairs_within_kernel_size(tmp_path):
    """A gamma_range-like grid (kernel 5 and 7 x kaiming and two gamma ranges x 3 seeds), no MLflow needed."""
    from echos_core.report import SweepRuns, build_report

    rows, curves = [], []
    for k in (5, 7):
        for scheme, lo, hi, gain in (("kaiming", 0.2, 0.8, 0.0), ("dog", 0.1, 0.3, 1.0), ("dog", 0.3, 0.7, 2.0)):
            for seed in (0, 1, 2):
                run_id = f"r{k}{scheme}{lo}{seed}"
                rows.append({"run_id": run_id, "seed": seed, "status": "finished", "asha_stopped": False,
                             "complete": True, "epochs_completed": 2, "epochs_planned": 2, "start_time": seed,
                             "final_val_top1": 50.0 + k + gain + 0.5 * seed, "init.scheme": scheme,
                             "init.gamma_low": lo, "init.gamma_high": hi, "init.on_ratio": 0.5,
                             "model.kernel_size": k, "train.epochs": 2})
                curves += [(run_id, "val_top1", e, 40.0 + 5 * e) for e in (1, 2)]
    runs = SweepRuns(sweep="g", experiment="g", tracking_uri="sqlite:///x.db", metric="val_top1", sweep_ids=["g-1"],
                     all_sweep_ids=["g-1"], trials=pd.DataFrame(rows),
                     curves=pd.DataFrame(curves, columns=["run_id", "key", "epoch", "value"]), param_keys=[])
    rep = build_report(runs, tmp_path)
    assert set(rep.trials["arm"]) == {f"kaiming kernel_size={k}" for k in (5, 7)} | {
        f"dog gamma_low={lo} gamma_high={hi} kernel_size={k}" for lo, hi in ((0.1, 0.3), (0.3, 0.7)) for k in (5, 7)}
    p = rep.paired
    assert len(p) == 4 and all(r.baseline.endswith(r.arm[-13:]) for r in p.itertuples())  # same kernel_size
    diffs = dict(zip(p["arm"], p["mean_diff"]))
    assert diffs["dog gamma_low=0.1 gamma_high=0.3 kernel_size=7"] == pytest.approx(1.0)
    assert diffs["dog gamma_low=0.3 gamma_high=0.7 kernel_size=5"] == pytest.approx(2.0)
    assert (p["sd_diff"] == 0).all() and p["p"].isna().all()  # no spread: an interval of width 0, no t-test
    assert rep.contrasts.empty and rep.trend.empty  # on_ratio held at 0.5
    for name in ("accuracy_vs_gamma.png", "accuracy_vs_kernel_size.png", "accuracy_vs_on_ratio.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert not (tmp_path / "cluster_fractions.png").exists()


# --------------------------------------------------------------------------- bad input


def test_unknown_experiment_lists_existing(store, capsys, tmp_path):
    assert main(["report", "nosuch", "--tracking-uri", store["uri"], "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("echos: error: experiment 'nosuch' not found") and "fake" in err and "other" in err
    assert not (tmp_path / "nosuch").exists()


def test_unknown_sweep_in_experiment_lists_sweeps(store, capsys, tmp_path):
    assert main(["report", "nosuch", "--experiment", SWEEP, "--tracking-uri", store["uri"],
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sweeps there: fake" in err


@pytest.mark.parametrize("argv, needle", [
    (["--baselines", "kaiming", "xavier"], "unknown init scheme"),
    (["--metric", "val_top9"], "no trial logged it"),
    (["--sweep-id", "fake-1999"], "not a sweep id"),
    (["--reference-on-ratio", "1.5"], "must be in [0, 1]"),
])
def test_bad_options_one_line_exit_2(store, capsys, tmp_path, argv, needle):
    assert main(["report", SWEEP, "--tracking-uri", store["uri"], "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_missing_store_is_an_error_and_not_created(tmp_path, capsys):
    db = tmp_path / "none.db"
    assert main(["report", SWEEP, "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not db.exists()


# --------------------------------------------------------------------------- a real (tiny) sweep


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_report_of_a_real_smoke_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "echos_core", "sweep", str(REPO / "sweeps" / "quick.yaml"),
                           "--smoke-test", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results"
    assert main(["report", "quick-smoke", "--tracking-uri", uri, "--out", str(out)]) == 0
    d = out / "quick-smoke"
    t = pd.read_csv(d / "trials.csv")
    assert len(t) == 4  # 2 configurations x 2 seeds
    assert set(t["seed"]) == {0, 1} and (t["epochs_completed"] >= 1).all()
    assert (t["complete"] | t["asha_stopped"]).all()
    # arms from the sweep's arm param (init scheme / on_ratio) and the sampled lr, never its `arm.init` label
    assert all(a.split()[0] in ("dog", "kaiming", "default") and "init=" not in a for a in t["arm"])
    assert not any("on_ratio=" in a for a in t["arm"] if not a.startswith("dog"))
    for name in ("report.md", "arms.csv", "paired.csv", "learning_curves.png"):
        assert (d / name).stat().st_size > 0
    md = (d / "report.md").read_text()
    assert "echos sweep sweeps/quick.yaml --smoke-test" in md


# --------------------------------------------------------------------------- a declared analysis


DECLARED = {
    "primary": {"contrast": [{"init.scheme": "dog", "init.on_ratio": 0.5}, {"init.scheme": "dog", "init.on_ratio": 0.0}]},
    "secondary": [
        {"contrast": [{"init.scheme": "dog", "init.on_ratio": 1.0}, {"init.scheme": "dog", "init.on_ratio": 0.0}]},
        {"contrast": [{"init.scheme": "dog", "init.on_ratio": 0.5}, {"init.scheme": "kaiming"}], "model": "paired"},
    ],
    "pool": {"init.scheme": "dog"}, "alpha": 0.05, "margin": 2.0,
}


def test_declared_analysis_primary_first_worded_by_the_rules(store, tmp_path):
    import yaml

    f = tmp_path / "analysis.yaml"
    f.write_text(yaml.safe_dump(DECLARED))
    out = tmp_path / "out"
    assert main(["report", SWEEP, "--tracking-uri", store["uri"], "--out", str(out), "--analysis", str(f)]) == 0
    md = (out / SWEEP / "report.md").read_text()
    assert md.index("## Primary result") < md.index("## What was run") < md.index("## Paired differences")
    # the pooled dog arms (3 x 3, balanced): contrast = difference of means; se from the two-way residual
    Y = np.array([FINAL[("dog", 0.0)], FINAL[("dog", 0.5)], FINAL[("dog", 1.0)]])
    r = Y - Y.mean(1, keepdims=True) - Y.mean(0, keepdims=True) + Y.mean()
    se = math.sqrt(2 * (r ** 2).sum() / 4 / 3)
    est = Y[1].mean() - Y[0].mean()
    lo, hi = est - stats.t.ppf(0.975, 4) * se, est + stats.t.ppf(0.975, 4) * se
    assert 2 * stats.t.sf(est / se, 4) < 0.05  # the primary is tested alone: better
    assert (f"`dog on_ratio=0.5` is better than `dog on_ratio=0`: +{est:.2f} points, 95% CI [{lo:+.2f}, {hi:+.2f}]"
            in md)
    assert "pooled arm + seed model, n = 3 seeds" in md
    # dog 1 vs dog 0 differ by 0.5 << margin 2: TOST p 0.016, Holm over two secondaries 0.031 -> equivalent
    assert "`dog on_ratio=1` and `dog on_ratio=0` are equivalent within ±2 points" in md
    # dog 0.5 vs kaiming: unadjusted p 0.047, Holm 0.094 -> not resolved, with the detectable difference
    d = np.array(FINAL[("dog", 0.5)]) - np.array(FINAL[("kaiming", None)])
    mdd = min_detectable_difference(d.std(ddof=1), 3)
    assert f"`dog on_ratio=0.5` vs `kaiming`: not resolved at n = 3 (detectable at 80% power: {mdd:.2f} points)" in md
    table = pd.read_csv(out / SWEEP / "declared.csv")
    assert table["role"].tolist() == ["primary", "secondary", "secondary"]
    assert table.loc[2, "p_adj"] == pytest.approx(min(1.0, 2 * table.loc[2, "p"]))
    assert yaml.safe_load((out / SWEEP / "analysis.yaml").read_text())["margin"] == 2.0


def test_declared_arm_that_matches_no_arm_is_one_line(store, tmp_path, capsys):
    import yaml

    bad = {**DECLARED, "primary": {"contrast": [{"init.scheme": "dog", "init.on_ratio": 0.3},
                                                {"init.scheme": "dog", "init.on_ratio": 0.0}]}}
    f = tmp_path / "analysis.yaml"
    f.write_text(yaml.safe_dump(bad))
    assert main(["report", SWEEP, "--tracking-uri", store["uri"], "--out", str(tmp_path), "--analysis", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analysis.primary contrast dog on_ratio=0.3: matches 0 arms" in err[0]


# --------------------------------------------------------------------------- self-contained results


def test_epochs_csv_holds_every_trials_per_epoch_metrics(report_dir):
    e = pd.read_csv(report_dir / "epochs.csv")
    assert list(e.columns[:4]) == ["run_id", "arm", "seed", "epoch"]
    assert {"val_top1", "val_loss", "train_loss", "kernels/on_fraction"} <= set(e.columns)
    assert len(e) == 15 * EPOCHS + 1  # 15 complete trials x 3 epochs + the ASHA-stopped trial's one epoch
    k0 = e[(e["arm"] == "kaiming") & (e["seed"] == 0)].sort_values("epoch")
    final = FINAL[("kaiming", None)][0]
    assert k0["val_top1"].tolist() == [final - 5.0 * (EPOCHS - ep) for ep in range(1, EPOCHS + 1)]
    assert k0["val_loss"].tolist() == pytest.approx([2.0 - 0.1 * ep for ep in range(1, EPOCHS + 1)])


def test_report_rebuilt_from_the_csvs_alone_is_the_same(report_dir, tmp_path):
    import shutil

    src = tmp_path / "fake"
    src.mkdir()
    for name in ("trials.csv", "epochs.csv"):
        shutil.copy(report_dir / name, src / name)
    assert main(["report", "--from-csv", str(src)]) == 0  # no MLflow store anywhere
    for name in ("arms.csv", "paired.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(src / name), pd.read_csv(report_dir / name))
    for name in ("learning_curves.png", "cluster_fractions.png", "accuracy_vs_on_ratio.png", "forest.png"):
        assert (src / name).stat().st_size > 0
    assert pd.read_csv(src / "trials.csv").equals(pd.read_csv(report_dir / "trials.csv"))  # left as it was
    md = (src / "report.md").read_text()
    assert f"Rebuilt from the CSV files in `{src}` alone (`trials.csv`, `epochs.csv`)" in md
    assert f"echos report --from-csv {src}" in md


def test_a_rebuilt_report_names_the_spec_of_its_sweep_wherever_it_lies_under_sweeps(report_dir, tmp_path,
                                                                                 monkeypatch):
    """The CSVs know the sweep's name only; the rerun command names the one spec under ./sweeps/ with that
    name (sweeps/v2/..., whatever its file is called), else sweeps/<name>.yaml."""
    import shutil

    src = tmp_path / "out" / "fake"
    src.mkdir(parents=True)
    for name in ("trials.csv", "epochs.csv"):
        shutil.copy(report_dir / name, src / name)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--from-csv", str(src)]) == 0  # no ./sweeps here: the fallback, sweeps/<name>.yaml
    md = (src / "report.md").read_text()
    name = md.split("Rerun the sweep: `echos sweep sweeps/", 1)[1].split(".yaml`", 1)[0]
    assert name and "/" not in name
    (tmp_path / "sweeps" / "v2").mkdir(parents=True)
    (tmp_path / "sweeps" / "v2" / "study_a.yaml").write_text(f"name: {name}\nbase: {{}}\n")
    (tmp_path / "sweeps" / "other.yaml").write_text("name: something_else\n")
    (tmp_path / "sweeps" / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["report", "--from-csv", str(src)]) == 0
    assert "- Rerun the sweep: `echos sweep sweeps/v2/study_a.yaml`" in (src / "report.md").read_text()


def test_from_csv_without_epochs_csv_says_so(report_dir, tmp_path):
    import shutil

    shutil.copy(report_dir / "trials.csv", tmp_path / "trials.csv")
    assert main(["report", "--from-csv", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "There is no `epochs.csv` for this sweep" in md and not (tmp_path / "learning_curves.png").exists()


@pytest.mark.parametrize("argv, needle", [
    (["report", "--from-csv", "NOWHERE"], "--from-csv NOWHERE: no trials.csv there"),
    (["report"], "SWEEP: give a sweep name or spec, or --from-csv DIR"),
    (["report", "fake", "--from-csv", "x"], "exactly one"),
])
def test_from_csv_bad_input_is_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_report_of_a_tiny_real_sweep_with_a_declared_analysis(tmp_path):
    """A real grid sweep (Ray, MLflow) whose spec declares its analysis: the report states the primary first,
    worded by the rules, with its numbers from the trials; epochs.csv holds every epoch; --from-csv agrees."""
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dog, kaiming = {"init.scheme": "dog", "init.on_ratio": 0.5}, {"init.scheme": "kaiming"}
    spec = {
        "name": "tiny",
        "base": {"model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
                 "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
                 "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "device": "cpu", "warmup_epochs": 0}},
        "space": {"init": {"type": "grid", "values": [kaiming, dog]}},
        "search": "grid", "seeds": [0, 1, 2], "max_concurrent": 2, "resources": {"cpus": 1},
        "mlflow": {"tracking_uri": uri}, "ray": {"storage_path": str(tmp_path / "ray"), "num_cpus": 2},
        "analysis": {"primary": {"contrast": [dog, kaiming], "model": "paired"}, "margin": 5.0,
                     "target_difference": 5.0, "pilot_sd": 3.0},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "echos_core", "sweep", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "primary: dog on_ratio=0.5 - kaiming (paired t-test)" in proc.stdout and "power (paired sd 3" in proc.stdout
    out = tmp_path / "results"
    assert main(["report", str(path), "--out", str(out)]) == 0
    d = out / "tiny"
    md = (d / "report.md").read_text()
    assert md.index("## Primary result") < md.index("## What was run")
    t = pd.read_csv(d / "trials.csv")
    a = t[t["init.scheme"] == "dog"].sort_values("seed")["final_val_top1"].to_numpy()  # the one DoG arm: "dog"
    b = t[t["init.scheme"] == "kaiming"].sort_values("seed")["final_val_top1"].to_numpy()
    diff = a - b
    n, mean = 3, diff.mean()
    sd = diff.std(ddof=1)
    if sd > 0:
        p = stats.ttest_rel(a, b).pvalue
        se = sd / math.sqrt(n)
        tost = max(stats.t.sf((mean + 5.0) / se, n - 1), stats.t.cdf((mean - 5.0) / se, n - 1))
        verdict = ("better" if mean > 0 else "worse") if p < 0.05 else \
            "equivalent within ±5 points" if tost < 0.05 else "not resolved at n = 3"
        primary = md.split("## Primary result")[1].split("\n\n")[1]
        assert verdict in primary and f"{mean:+.2f} points" in primary
    e = pd.read_csv(d / "epochs.csv")
    assert len(e) == 6 * 2 and set(e["epoch"]) == {1, 2} and "val_loss" in e.columns
    assert main(["report", "--from-csv", str(d), "--out", str(tmp_path / "again")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "tiny" / "declared.csv"),
                                  pd.read_csv(d / "declared.csv"))
    # by name: the analysis comes from the spec the sweep logged with its MLflow parent run
    assert main(["report", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "by-name")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "by-name" / "tiny" / "declared.csv"),
                                  pd.read_csv(d / "declared.csv"))


def test_pilot_sd_read_from_an_earlier_sweep_in_mlflow(store, tmp_path, capsys):
    """analysis.pilot_sd: {sweep: fake} -> sqrt(2) x the residual sd of fake's arm + seed model (complete trials)."""
    import yaml

    from echos_core.report.design import PooledModel

    spec = yaml.safe_load((REPO / "sweeps" / "digits.yaml").read_text())
    spec["analysis"]["pilot_sd"] = {"sweep": SWEEP, "tracking_uri": store["uri"]}
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    table = pd.DataFrame([{"arm": f"{s} {r}", "seed": seed, "y": v} for (s, r), vals in FINAL.items()
                          for seed, v in enumerate(vals)])
    sd = PooledModel(table).paired_sd
    assert f"power (paired sd {sd:g} points from sweep '{SWEEP}' (15 complete trials" in out
    assert f"{min_detectable_difference(sd, 4):.2f}" in out
