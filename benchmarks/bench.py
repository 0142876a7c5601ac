"""echos speed benchmark: the figures (a)-(g) of issue 7, measured side by side in one run.

    python benchmarks/bench.py                  # make bench: every figure (~15-25 min on 2 busy CPU cores)
    python benchmarks/bench.py --quick          # seconds: every code path, tiny sizes (what CI runs)
    python benchmarks/bench.py --device cuda    # the GPU figures (a), (b), (c), (d), (f) on a CUDA device

Every comparison runs its variants in interleaved rounds (A B A B ...) after one warm-up round
and prints the median and the min-max of each, and the median of the per-round ratios: on a
machine other people load at the same time, absolute times drift but ratios measured
interleaved stay meaningful.  Training runs on one thread (``train.threads=1``: one trial per
core, as sweeps run), the onoff_ratio study's model and data (sweeps/onoff_ratio.yaml).
Targets are printed next to the figures, never asserted: benchmarks/README.md records a run.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
ONOFF = ROOT / "sweeps" / "onoff_ratio.yaml"
HEAVY = {"hflip": 0.5, "crop_padding": 2, "randaugment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25,
         "mixup": 0.8, "cutmix": 1.0}

# --------------------------------------------------------------------------- measuring


def interleaved(variants: dict[str, Callable[[], float]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Each variant returns its own measurement; one warm-up round, then ``rounds`` interleaved rounds."""
    for fn in variants.values() if warmup else ():
        fn()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            out[name].append(fn())
    return out


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ratio(a: list[float], b: list[float]) -> str:
    per_round = [x / y for x, y in zip(a, b)]
    return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"target {'>=' if higher_is_better else '<='} {target:g}: {'met' if ok else 'MISSED'}"


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    load = ", load %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} logical CPUs{gpu}{load}; python {platform.python_version()}, "
            f"torch {torch.__version__}; device {device}; commit {rev or '?'}")


# --------------------------------------------------------------------------- set-ups


def onoff_config(device: str, quick: bool, **sections) -> dict:
    """The onoff_ratio trial's trainer config (its base, DoG at On fraction 0.5, seed 0), one thread."""
    d = copy.deepcopy(yaml.safe_load(ONOFF.read_text())["base"])
    d["init"].update(scheme="dog", on_ratio=0.5)
    d["train"].update(device=device, threads=1, keep_checkpoints=1)
    d["seed"] = 0
    if quick:
        d["data"].update(train_limit=256, val_limit=128)
        d["model"].update(dim=16, depth=2)
    for key, value in sections.items():
        d.setdefault(key, {}).update(value)
    return d


def bare_loop(cfg, data, steps: int, device, evaluate: bool = False) -> float:
    """The same model, init, batches, memory format and threads (``train.threads``, as the trainer sets them)
    trained by a plain PyTorch loop; seconds."""
    from echos_core.trainer import torch_threads

    with torch_threads(cfg.train.threads):
        return _bare_loop(cfg, data, steps, device, evaluate)


def _bare_loop(cfg, data, steps: int, device, evaluate: bool) -> float:
    import torch
    from torch import nn

    from echos_core.inits import apply_init
    from echos_core.models import create_model
    from echos_core.trainer import use_channels_last

    model = create_model(cfg.model, num_classes=data.num_classes, in_chans=3).to(device)
    apply_init(model, cfg.init, cfg.seed)
    cl = use_channels_last(cfg.train.channels_last, model)
    if cl:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    epochs = max(1, -(-steps // (len(data.train) // cfg.train.batch_size)))
    done = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in data.loader("train", cfg.train.batch_size, seed=cfg.seed, epoch=epoch, device=device):
            if done == steps:
                break
            x, y = x.to(device), y.to(device)
            with amp:
                loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last) if cl else x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        if evaluate:
            model.eval()
            with torch.no_grad(), amp:
                for x, y in data.loader("val", cfg.train.batch_size, seed=cfg.seed, epoch=0, device=device):
                    model(x.to(device)).float().argmax(1).eq(y.to(device)).sum().item()
    sync()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the figures


def fig_a(args, device) -> None:
    """(a) echos' training steps vs the bare loop: seconds per step."""
    import torch

    from echos_core.config import config_from_dict
    from echos_core.data import build_data
    from echos_core.trainer import train

    steps = 3 if args.quick else 40
    d = onoff_config(args.device, args.quick, train={"epochs": 1, "steps_per_epoch": steps, "kernel_metrics": False})
    cfg = config_from_dict(d)
    data = build_data(cfg)
    torch.set_num_threads(1)
    def echos() -> float:
        h = train(cfg, tempfile.mkdtemp(prefix="echos-bench-")).history[0]
        return cfg.train.batch_size / h["images_per_sec"]  # the trainer times its steps only

    r = interleaved({"echos": echos, "bare": lambda: bare_loop(cfg, data, steps, device) / steps}, args.rounds)
    value = statistics.median([a / b for a, b in zip(r["echos"], r["bare"])])
    print(f"(a) train step, batch {cfg.train.batch_size}: echos {spread(r['echos'])}, bare PyTorch {spread(r['bare'])}"
          f" -> {ratio(r['echos'], r['bare'])}; {verdict(value, 1.05)}")


def fig_b(args, device) -> None:
    """(b) a whole trial (evaluation, kernel metrics, checkpoints, mosaics) vs the bare loop with evaluation."""
    from echos_core.config import config_from_dict
    from echos_core.data import build_data
    from echos_core.trainer import train

    epochs = 1 if args.quick else 2
    cfg = config_from_dict(onoff_config(args.device, args.quick, train={"epochs": epochs}))
    data = build_data(cfg)
    steps = epochs * (len(data.train) // cfg.train.batch_size)
    def echos() -> float:
        t0 = time.perf_counter()
        train(cfg, tempfile.mkdtemp(prefix="echos-bench-"))
        return time.perf_counter() - t0

    r = interleaved({"echos": echos, "bare": lambda: bare_loop(cfg, data, steps, device, evaluate=True)}, args.rounds)
    value = statistics.median([a / b for a, b in zip(r["echos"], r["bare"])])
    print(f"(b) whole trial, {epochs} epochs of {steps // epochs} steps: echos {spread(r['echos'])}, "
          f"bare loop + evaluation {spread(r['bare'])} -> {ratio(r['echos'], r['bare'])}; {verdict(value, 1.08)}")
    once = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import sklearn.cluster, "
                           "matplotlib.figure; print(time.perf_counter() - t)"], capture_output=True, text=True)
    if once.returncode == 0:
        print(f"    not in (b): scikit-learn + matplotlib import once per process (trial worker): "
              f"{float(once.stdout):.2f} s")


def fig_c(args, device) -> None:
    """(c) an onoff_ratio trial the old way (contiguous, per-sample loader) vs the new default."""
    from echos_core.config import config_from_dict
    from echos_core.trainer import train

    epochs = 1 if args.quick else args.trial_epochs
    new = config_from_dict(onoff_config(args.device, args.quick, train={"epochs": epochs}))
    old = config_from_dict(onoff_config(args.device, args.quick, train={"epochs": epochs, "channels_last": "off"},
                                        data={"pipeline": "loader"}))
    def run(cfg) -> Callable[[], float]:
        def timed() -> float:
            t0 = time.perf_counter()
            train(cfg, tempfile.mkdtemp(prefix="echos-bench-"))
            return time.perf_counter() - t0
        return timed

    rounds = 1 if args.quick else args.trial_rounds
    r = interleaved({"old": run(old), "new": run(new)}, rounds, warmup=False)  # long runs: warm after (a), (b)
    value = statistics.median([a / b for a, b in zip(r["new"], r["old"])])
    print(f"(c) {epochs}-epoch onoff_ratio trial: old (contiguous, per-sample loader) {spread(r['old'], digits=1)}, "
          f"new default {spread(r['new'], digits=1)} -> new/old {ratio(r['new'], r['old'])}; {verdict(value, 0.6)}")


def fig_d(args, device) -> None:
    """(d) images per second: resident path vs per-sample loader, default and heavy augmentation."""
    import torch

    from echos_core.config import config_from_dict
    from echos_core.data import build_data

    torch.set_num_threads(1)
    results = {}
    for aug_name, aug in (("flip+crop", None), ("heavy", HEAVY)):
        datas = {}
        for pipeline in ("resident", "loader"):
            a = dict(aug or {})
            if pipeline == "resident":
                a["randaugment"] = None  # not batch-capable: the resident path never does it
            d = onoff_config(args.device, args.quick, data={"pipeline": pipeline, **({"augment": a} if aug else {})})
            datas[pipeline] = build_data(config_from_dict(d))

        def images_per_s(data) -> Callable[[], float]:
            def timed() -> float:
                n = 0
                t0 = time.perf_counter()
                for x, y in data.loader("train", 64, seed=0, epoch=1, device=device):
                    x, y = x.to(device), y.to(device)
                    if data.mixup_fn is not None:
                        x, y = data.mixup_fn(x, y)
                    n += len(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return n / (time.perf_counter() - t0)
            return timed

        results[aug_name] = interleaved({k: images_per_s(v) for k, v in datas.items()}, args.rounds)
    flip = results["flip+crop"]
    value = statistics.median([a / b for a, b in zip(flip["resident"], flip["loader"])])
    print(f"(d) images/s, flip+crop: resident {spread(flip['resident'], 'img/s', 0)}, per-sample loader "
          f"{spread(flip['loader'], 'img/s', 0)} -> {ratio(flip['resident'], flip['loader'])}; "
          f"{verdict(value, 4.0, higher_is_better=True)}")
    heavy = results["heavy"]
    print(f"    heavy: per-sample loader with RandAugment + erasing + mixup/CutMix "
          f"{spread(heavy['loader'], 'img/s', 0)}; resident with erasing + mixup/CutMix (RandAugment is per-sample "
          f"only) {spread(heavy['resident'], 'img/s', 0)}")


def fig_e(args, device) -> None:
    """(e) a small local sweep: launch to first epoch, and Ray Tune + MLflow overhead per further trial."""
    from mlflow.tracking import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="echos-bench-sweep-"))
    base = onoff_config("cpu", args.quick, data={"train_limit": 640, "val_limit": 256}, train={"epochs": 2})
    base["train"].pop("threads")
    base.pop("seed")
    trials = 4
    spec = {"name": "bench", "base": base, "space": {"init.on_ratio": {"type": "grid", "values": [0.0, 0.5]}},
            "search": "grid", "scheduler": "none", "max_concurrent": 1, "metric": "val_top1", "mode": "max",
            "resources": {"cpus": 1, "gpus": 0}, "seeds": [0, 1],
            "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "bench"},
            "ray": {"storage_path": str(tmp / "ray_results"), "max_failures": 0, "keep_checkpoints": 1}}
    (tmp / "bench.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "echos_core", "sweep", str(tmp / "bench.yaml")], cwd=tmp, env=env,
                         capture_output=True, text=True)
    wall = time.time() - t0
    if out.returncode != 0:
        print(f"(e) sweep failed (exit {out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return
    client = MlflowClient(tracking_uri=spec["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("bench")
    spans = []  # (start of training, end of training, seconds of training) per trial
    for run in client.search_runs([exp.experiment_id], max_results=100):
        hist = sorted(client.get_metric_history(run.info.run_id, "epoch_time_s"), key=lambda m: m.step)
        if hist:
            train_s = sum(m.value for m in hist)
            spans.append((hist[0].timestamp / 1000 - hist[0].value, hist[-1].timestamp / 1000, train_s))
    spans.sort()
    if len(spans) != trials:
        print(f"(e) expected {trials} trial runs with epochs in MLflow, found {len(spans)}")
        return
    first = spans[0][0] - t0
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]  # one trial at a time: end of one -> start of the next
    per_trial = statistics.mean(s[2] for s in spans)
    print(f"(e) local sweep, {trials} trials of 2 epochs one at a time: launch -> first epoch {first:.1f} s "
          f"({verdict(first, 15)}); overhead per further trial {statistics.median(gaps):.1f} s "
          f"({min(gaps):.1f}-{max(gaps):.1f}), {statistics.median(gaps) / per_trial:.0%} of a trial's "
          f"{per_trial:.1f} s of training; whole sweep {wall:.1f} s")


def fig_f(args, device) -> None:
    """(f) DoG init of every depthwise layer of convnext_base vs Kaiming, ms."""
    import torch

    from echos_core.config import InitConfig, ModelConfig
    from echos_core.inits import apply_init, find_depthwise_convs
    from echos_core.models import create_model

    name = "convnext_atto" if args.quick else "convnext_base"
    model = create_model(ModelConfig(name=name), num_classes=1000).to(device)
    n = len(find_depthwise_convs(model))

    def timed(scheme: str) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            apply_init(model, InitConfig(scheme=scheme), 0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1000
        return run

    r = interleaved({"dog": timed("dog"), "kaiming": timed("kaiming")}, args.rounds)
    print(f"(f) init of the {n} depthwise layers of {name}: DoG {spread(r['dog'], 'ms', 1)}, "
          f"Kaiming {spread(r['kaiming'], 'ms', 1)} -> {ratio(r['dog'], r['kaiming'])}")


def fig_g(args, device) -> None:
    """(g) wall time of ``echos --help`` and of a config error (train, sweep --dry-run)."""
    bad = Path(tempfile.mkdtemp(prefix="echos-bench-")) / "bad.yaml"
    bad.write_text(ONOFF.read_text().replace("lr: 0.003", "lr: -1"))
    commands = {
        "echos --help": ["--help"],
        "echos train <bad lr>": ["train", "--config", str(ROOT / "configs" / "embedded_convmixer.yaml"), "train.lr=-1"],
        "echos sweep <bad lr> --dry-run": ["sweep", str(bad), "--dry-run"],
    }

    def timed(argv) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "echos_core", *argv], capture_output=True)
            return time.perf_counter() - t0
        return run

    r = interleaved({k: timed(v) for k, v in commands.items()}, args.rounds)
    targets = {"echos --help": 1.0}
    parts = [f"{k} {spread(v, digits=2)} ({verdict(statistics.median(v), targets.get(k, 2.0))})" for k, v in r.items()]
    print("(g) start-up: " + "; ".join(parts))


FIGURES = {"a": fig_a, "b": fig_b, "c": fig_c, "d": fig_d, "e": fig_e, "f": fig_f, "g": fig_g}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: every code path in seconds (CI)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (figures a-d and f)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison (default 5; quick 1)")
    p.add_argument("--trial-rounds", type=int, default=3, help="rounds of (c), the 10-epoch trials (default 3)")
    p.add_argument("--trial-epochs", type=int, default=10, help="epochs of the (c) trials (default 10, as the study)")
    p.add_argument("--only", default="abcdefg", help="which figures, e.g. 'adg' (default all)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if bad := set(args.only) - set(FIGURES):
        p.error(f"--only: unknown figures {''.join(sorted(bad))}; choose from {''.join(FIGURES)}")
    if args.quick:
        args.only = args.only.replace("e", "")  # a real sweep takes minutes; test_sweep_e2e covers it
    import logging

    import torch

    logging.getLogger("echos").setLevel(logging.WARNING)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    print(f"echos benchmark{' (quick: sizes too small for the figures to mean anything)' if args.quick else ''}")
    print(f"machine: {machine(args.device)}")
    for key in args.only:
        FIGURES[key](args, device)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
