"""What are the "other" kernels (neither On- nor Off-centre) after training?

For every finished trial of a sweep (Ray's persisted final checkpoint in the sweep's storage
folder) this rebuilds the trial's exact initial weights (same seed, same construction order as
the trainer), and measures per depthwise kernel:

* its label (On / Off / other) from :func:`echos_core.analysis.cluster_kernels`;
* how far training moved it: ``||w_final - w_init|| / ||w_init||``, and the cosine between them;
* the best-fitting shape family (DoG, Gaussian, first / second Gaussian derivatives, saddle,
  step edge; :func:`echos_core.analysis.fit_shapes`) and its R^2, against the same fit on i.i.d.
  Gaussian noise kernels of the same size (the R^2 that chance alone gives).

Written to ``<out>/``: ``kernels.csv`` (one row per kernel), ``summary.csv`` (per init arm),
``summary.md`` and a mosaic of the "other" kernels of one trial per arm.

    echos other-kernels onoff_ratio --out results/other_kernels   # newest ray_results/onoff_ratio-<stamp>
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, config_to_dict, flatten
from ..registry import report_rank

__all__ = ["analyse_trials", "write_other_kernels", "resolve_sweep_dir"]


def resolve_sweep_dir(sweep: str | Path, storage: str | Path = "ray_results") -> Path:
    """A sweep's Ray folder: ``sweep`` itself if it is a folder, else the newest ``<storage>/<sweep>-<stamp>``."""
    path = Path(sweep)
    if path.is_dir():
        return path
    name = path.name
    runs = sorted(Path(storage).glob(f"{name}-[0-9]*-[0-9]*")) if Path(storage).is_dir() and name else []
    runs = [r for r in runs if r.is_dir()]
    if not runs:
        raise ConfigError(f"SWEEP_DIR={str(sweep)!r}: is not a folder, nor a sweep name with runs in "
                          f"{str(storage)!r} (expected ray_results/<sweep>-<stamp>)")
    return runs[-1]


def _final_checkpoints(sweep_dir: Path) -> list[Path]:
    out = []
    for trial in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.startswith("trial_")):
        ckpts = sorted(trial.glob("checkpoint_*/checkpoint.pt"))
        if ckpts:
            out.append(ckpts[-1])
    return out


def _arm_labels(configs: dict[str, dict]) -> dict[str, str]:
    """trial -> arm label, exactly as the sweep report names arms (:func:`echos_core.report.stats.assign_arms`)."""
    import pandas as pd

    from .stats import assign_arms

    trials = list(configs)
    table = assign_arms(pd.DataFrame([configs[t] for t in trials]))
    return dict(zip(trials, table["arm"]))


def _arm_order(arm: str) -> tuple:
    """Arms of the schemes under study first, then the baselines; alphabetical within each."""
    return (report_rank(arm.split(" ")[0])[0], arm)


def analyse_trials(sweep_dir: str | Path, noise_kernels: int = 4096) -> tuple[list[dict], dict]:
    from ..analysis import centre_surround_index, cluster_kernels, fit_dog, fit_shapes
    from ..inits import depthwise_kernels
    from ..checkpoint import model_from_checkpoint
    from ..build import build_run

    sweep_dir = resolve_sweep_dir(sweep_dir)
    rows: list[dict] = []
    examples: dict = {}  # trial -> its "other" kernels
    configs: dict[str, dict] = {}  # trial -> flattened config
    k = 7
    for path in _final_checkpoints(sweep_dir):
        model, cfg, info = model_from_checkpoint(path)
        if info["epoch"] != cfg.train.epochs:
            continue  # unfinished trial: not evidence about trained kernels
        init = build_run(cfg).model  # the exact initial weights: the trainer builds the same way
        final = dict(depthwise_kernels(model))
        start = dict(depthwise_kernels(init))
        w = torch.cat([final[n] for n in final]).double().numpy()
        k = w.shape[-1]
        w0 = torch.cat([start[n] for n in final]).double().numpy()
        layer = np.concatenate([[n] * final[n].shape[0] for n in final])
        fit = fit_dog(w)
        csi = centre_surround_index(w, fit=fit)
        labels = cluster_kernels(w, csi=csi, seed=0).labels
        shapes = fit_shapes(w)
        flat, flat0 = w.reshape(len(w), -1), w0.reshape(len(w0), -1)
        moved = np.linalg.norm(flat - flat0, axis=1) / np.maximum(np.linalg.norm(flat0, axis=1), 1e-12)
        cos = (flat * flat0).sum(1) / np.maximum(np.linalg.norm(flat, axis=1) * np.linalg.norm(flat0, axis=1), 1e-12)
        trial = path.parent.parent.name
        configs[trial] = flatten(config_to_dict(cfg))
        for i in range(len(w)):
            rows.append({"arm": trial, "seed": cfg.seed, "trial": trial, "layer": layer[i],
                         "label": labels[i], "csi": float(csi[i]), "dog_r2": float(fit.r2[i]),
                         "shape": shapes.family[i], "shape_r2": float(shapes.r2[i]),
                         "moved": float(moved[i]), "cos_to_init": float(cos[i])})
        if np.any(labels == "other"):
            examples[trial] = {"kernels": torch.from_numpy(w[labels == "other"]).float(), "trial": trial,
                               "seed": cfg.seed, "layers": sorted(set(layer[labels == "other"].tolist())),
                               "n_layer_kernels": len(w)}
    arm_of = _arm_labels(configs)
    for row in rows:
        row["arm"] = arm_of[row["trial"]]
    firsts: dict = {}
    for trial, example in examples.items():  # one example trial per arm, the first one
        firsts.setdefault(arm_of[trial], example)
    examples = firsts
    # the chance level of the shape fit: i.i.d. Gaussian kernels of the same size
    noise = np.random.default_rng(0).standard_normal((noise_kernels, k, k))
    chance = fit_shapes(noise)
    return rows, {"examples": examples, "noise_shape_r2": chance.r2, "noise_dog_r2": fit_dog(noise).r2,
                  "kernel_size": k}


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    arms = sorted({r["arm"] for r in rows}, key=_arm_order)
    for arm in arms:
        sel = [r for r in rows if r["arm"] == arm]
        other = [r for r in sel if r["label"] == "other"]
        fam = {}
        for r in other:
            fam[r["shape"]] = fam.get(r["shape"], 0) + 1
        out.append({
            "arm": arm, "trials": len({r["trial"] for r in sel}), "kernels": len(sel),
            "on": np.mean([r["label"] == "on" for r in sel]), "off": np.mean([r["label"] == "off" for r in sel]),
            "other": len(other) / len(sel),
            "other_dog_r2": np.mean([r["dog_r2"] for r in other]) if other else float("nan"),
            "other_shape_r2": np.mean([r["shape_r2"] for r in other]) if other else float("nan"),
            "other_moved": np.median([r["moved"] for r in other]) if other else float("nan"),
            "other_cos_to_init": np.median([r["cos_to_init"] for r in other]) if other else float("nan"),
            "all_moved": np.median([r["moved"] for r in sel]),
            "other_families": json.dumps({k: round(v / len(other), 3) for k, v in sorted(fam.items())}) if other else "{}",
        })
    return out


def write_other_kernels(sweep_dir: str | Path, out: str | Path) -> Path:
    from ..plots import kernel_mosaic

    sweep_dir = resolve_sweep_dir(sweep_dir)
    rows, extra = analyse_trials(sweep_dir)
    if not rows:
        raise ConfigError(f"SWEEP_DIR={str(sweep_dir)!r}: holds no finished trial checkpoints")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "kernels.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    summary = _summary(rows)
    with open(out / "summary.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(summary[0]))
        wr.writeheader()
        wr.writerows(summary)
    for arm, ex in extra["examples"].items():
        name = arm.replace(" ", "_").replace("=", "")
        layers = ", ".join(ex["layers"])
        kernel_mosaic(ex["kernels"], out / f"other_{name}.png", max_kernels=64,
                      title=f"'other' kernels after training: {arm}, trial {ex['trial']} (seed {ex['seed']}) only;\n"
                            f"{len(ex['kernels'])} of its {ex['n_layer_kernels']} depthwise kernels, layers {layers}")
    chance_shape = float(np.mean(extra["noise_shape_r2"]))
    chance_dog = float(np.mean(extra["noise_dog_r2"]))
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "# The \"other\" kernels after training",
        "",
        f"Source: the final checkpoints of `{Path(sweep_dir).name}` ({len({r['trial'] for r in rows})} finished trials, "
        f"seeds {seeds}, {len(rows)} depthwise {extra['kernel_size']}x{extra['kernel_size']} kernels).",
        f"Regenerate: `echos other-kernels {sweep_dir.name.rsplit('-', 2)[0]} --out {out}` (the newest run of the sweep "
        f"in ray_results/; or name its folder).",
        "",
        "Per arm: label fractions (k-means, clusters named by centre-surround index), and for the *other* kernels the",
        "mean R^2 of the best DoG and of the best shape of any family (DoG, Gaussian, 1st/2nd Gaussian derivative,",
        "saddle, step edge; orientation and size fitted), the median relative distance moved from the exact initial",
        "kernel (`||w - w0|| / ||w0||`) and the median cosine to it.",
        "",
        "| arm | trials | kernels | on | off | other | other: DoG R^2 | other: best-shape R^2 | other: moved | other: cos to init | all: moved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['arm']} | {s['trials']} | {s['kernels']} | {s['on']:.3f} | {s['off']:.3f} | {s['other']:.3f} | "
                     f"{s['other_dog_r2']:.3f} | {s['other_shape_r2']:.3f} | {s['other_moved']:.3f} | "
                     f"{s['other_cos_to_init']:.3f} | {s['all_moved']:.3f} |")
    lines += [
        "",
        f"Chance level: i.i.d. Gaussian {extra['kernel_size']}x{extra['kernel_size']} kernels (4096, seeded) give a mean "
        f"best-shape R^2 of {chance_shape:.3f} and a mean DoG R^2 of {chance_dog:.3f} with the same fits.",
        "",
        "Families of the other kernels (fraction with best-shape R^2 >= 0.5; 'none' below): see `summary.csv`,",
        "column `other_families`; one row per kernel in `kernels.csv`.",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out
