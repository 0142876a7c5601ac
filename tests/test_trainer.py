"""The trainer: learning, exact resume, checkpoints, run folder, callback, divergence, hooks, init wiring."""

import json
import math

import pytest
import torch
import yaml

from echos_core import build as build_mod
from echos_core.config import ConfigError, config_from_dict, config_to_dict
from echos_core.inits import apply_init, find_depthwise_convs
from echos_core.checkpoint import load_checkpoint
from echos_core.trainer import TrainingDiverged, lr_factor, train

# Wall-clock quantities differ between two identical runs; everything else must not.
TIMING = {"images_per_sec", "epoch_time_s"}


def make_cfg(d, **sections):
    """``cfg_dict`` with some sections updated, one thread (fast on a shared CPU)."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            d.setdefault(key, {}).update(value)
        else:
            d[key] = value
    d["train"].setdefault("threads", 1)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """One 3-epoch run of the shared tiny config, every checkpoint kept, with a hook and a callback."""
    cfg_dict = {  # tests/conftest.py:cfg_dict, which a module-scoped fixture cannot take
        "model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
        "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.5, "device": "cpu",
                  "keep_checkpoints": 3, "threads": 1},
        "seed": 0,
    }
    cfg = config_from_dict(cfg_dict)
    calls = []

    def hook(model):
        w = torch.cat([c.weight.flatten() for _, c in find_depthwise_convs(model)])
        return {"custom/mean_abs": w.abs().mean(), "custom/count": len(find_depthwise_convs(model))}

    run = tmp_path_factory.mktemp("runs") / "a"
    result = train(cfg, run, callback=lambda m, d: calls.append((m, d)), metric_hooks=[hook])
    return cfg_dict, cfg, result, calls


# --------------------------------------------------------------------------- learning


def test_loss_falls_on_embedded_data(cfg_dict, tmp_path):
    cfg = make_cfg(cfg_dict, data={"name": "embedded", "image_size": 32, "root": str(tmp_path / "data"),
                                   "train_limit": 640, "val_limit": 200},
                   model={"dim": 32}, train={"epochs": 4, "batch_size": 32, "steps_per_epoch": 10, "lr": 5e-3,
                                             "warmup_epochs": 0.2})
    result = train(cfg, tmp_path / "run")
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4
    assert losses[0] > 2.0  # about ln 10 = 2.30 at the start: ten classes, no prior
    assert losses[-1] < losses[0] - 0.25, losses
    assert result.best_top1 > 20.0  # chance is 10%


def test_lr_schedule_numbers():
    assert lr_factor(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_metrics_keys_and_values(three_epochs):
    _, cfg, result, _ = three_epochs
    h = result.history
    assert [m["epoch"] for m in h] == [1, 2, 3]
    base = {"epoch", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_sec", "lr", "epoch_time_s"}
    kernel_keys = {f"kernels/{k}" for k in ("on_fraction", "off_fraction", "other_fraction", "csi_mean",
                                            "csi_abs_mean", "dog_r2_mean", "count")}
    assert base | {"custom/mean_abs", "custom/count"} | kernel_keys == set(h[0])
    # DoG init with on_ratio 0.5: the first epoch's kernels are still mostly On or Off
    assert h[0]["kernels/on_fraction"] + h[0]["kernels/off_fraction"] > 0.5
    # 4 classes: top-5 is top-4, always right
    assert all(m["val_top5"] == 100.0 for m in h)
    assert all(0.0 <= m["val_top1"] <= 100.0 and m["images_per_sec"] > 0 for m in h)
    # 4 steps per epoch, 2 of warm-up, 12 in all: lr after step 4 and at the end
    m = cfg.train.min_lr / cfg.train.lr
    assert h[0]["lr"] == pytest.approx(cfg.train.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * 2 / 10))))
    assert h[-1]["lr"] == pytest.approx(cfg.train.min_lr)
    assert result.final == h[-1]
    assert result.best_top1 == max(x["val_top1"] for x in h)
    # hooks: tensors become floats, values merged per epoch
    assert h[0]["custom/count"] == 2 and isinstance(h[0]["custom/mean_abs"], float)
    assert h[0]["custom/mean_abs"] != h[-1]["custom/mean_abs"]


# --------------------------------------------------------------------------- run folder, checkpoints, callback


def test_run_folder_files(three_epochs):
    _, cfg, result, _ = three_epochs
    run = result.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "environment.json", "init_report.json", "kernels", "metrics.jsonl"]
    # mosaics of the first and last depthwise layer, at init and after the last epoch
    assert sorted(p.name for p in (run / "kernels").iterdir()) == [
        "final_blocks-0-0-fn-0.png", "final_blocks-1-0-fn-0.png",
        "init_blocks-0-0-fn-0.png", "init_blocks-1-0-fn-0.png"]
    assert config_from_dict(yaml.safe_load((run / "config.yaml").read_text())) == cfg
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    report = json.loads((run / "init_report.json").read_text())
    assert report == result.init_report
    assert (report["scheme"], report["kernels"], report["changed"]) == ("dog", 32, 32)
    assert [(layer["on"], layer["off"]) for layer in report["layers"]] == [(8, 8), (8, 8)]
    env = json.loads((run / "environment.json").read_text())
    assert env["torch_version"] == torch.__version__.split("+")[0]
    assert env["git_revision"]


def test_checkpoints_and_callback(three_epochs):
    _, cfg, result, calls = three_epochs
    assert [m["epoch"] for m, _ in calls] == [1, 2, 3]
    assert [m for m, _ in calls] == result.history
    dirs = [d for _, d in calls]
    assert [d.name for d in dirs] == ["epoch_0001", "epoch_0002", "epoch_0003"]
    assert all(d.parent == result.run_dir / "checkpoints" and (d / "checkpoint.pt").is_file() for d in dirs)
    assert sorted(p.name for p in dirs[0].iterdir()) == ["checkpoint.pt"]  # self-contained, one file

    ck = load_checkpoint(dirs[1])
    assert set(ck) == {"format", "epoch", "model", "optimizer", "scheduler", "history", "config", "rng", "path"}
    assert ck["epoch"] == 2
    assert ck["history"] == result.history[:2]
    assert ck["config"] == config_to_dict(cfg)
    assert set(ck["rng"]) == {"python", "numpy", "torch"}
    assert ck["scheduler"]["last_epoch"] == 8  # 2 epochs x 4 steps
    assert ck["optimizer"]["state"][0]["step"].item() == 8
    # the newest checkpoint holds the final weights
    final = load_checkpoint(result.run_dir)  # a run folder resolves to its newest checkpoint
    assert final["epoch"] == 3


def test_checkpoint_every_and_keep(cfg_dict, tmp_path):
    cfg = make_cfg(cfg_dict, train={"epochs": 3, "checkpoint_every": 2, "keep_checkpoints": 1, "steps_per_epoch": 1})
    seen = []
    result = train(cfg, tmp_path / "run", callback=lambda m, d: seen.append(d and d.name))
    assert seen == [None, "epoch_0002", "epoch_0003"]  # every 2nd epoch, and always the last
    assert [p.name for p in (result.run_dir / "checkpoints").iterdir()] == ["epoch_0003"]


# --------------------------------------------------------------------------- resume


def test_resume_reproduces_uninterrupted_run(three_epochs, tmp_path):
    _, cfg, full, _ = three_epochs
    calls = []
    resumed = train(cfg, tmp_path / "b", resume_from=full.run_dir / "checkpoints" / "epoch_0001",
                    callback=lambda m, d: calls.append(m["epoch"]),
                    metric_hooks=[lambda m: {"custom/mean_abs": 0.0, "custom/count": 0}])
    assert calls == [2, 3]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == full.history[0]  # carried over from the checkpoint
    for a, b in zip(full.history[1:], resumed.history[1:]):
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr"):
            assert b[key] == pytest.approx(a[key], abs=1e-6, rel=0), key
    wa = load_checkpoint(full.run_dir)["model"]
    wb = load_checkpoint(resumed.run_dir)["model"]
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-6
    assert len((resumed.run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_in_place_from_run_folder(cfg_dict, tmp_path):
    cfg = make_cfg(cfg_dict, train={"epochs": 1, "steps_per_epoch": 1})
    first = train(cfg, tmp_path / "run")
    more = make_cfg(cfg_dict, train={"epochs": 2, "steps_per_epoch": 1})
    second = train(more, resume_from=first.run_dir)  # run folder -> newest checkpoint, same folder
    assert second.run_dir == first.run_dir
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]


def test_resume_refuses_another_init(three_epochs, tmp_path):
    _, _, full, _ = three_epochs
    d = {**three_epochs[0], "init": {"scheme": "kaiming"}}
    with pytest.raises(ConfigError, match=r"^init.scheme='kaiming': the checkpoint .* was trained with 'dog'"):
        train(config_from_dict(d), tmp_path / "x", resume_from=full.run_dir)
    assert not (tmp_path / "x").exists()


def test_resume_from_missing_checkpoint(cfg_dict, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint.pt there"):
        train(make_cfg(cfg_dict), tmp_path / "x", resume_from=tmp_path)


# --------------------------------------------------------------------------- errors before compute


def test_batch_larger_than_data_is_a_config_error(cfg_dict, tmp_path):
    with pytest.raises(ConfigError, match=r"^train.batch_size=128: must be <= the number of training images \(64\)"):
        train(make_cfg(cfg_dict, train={"batch_size": 128}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_init_error_before_anything_is_written(cfg_dict, tmp_path):
    cfg = make_cfg(cfg_dict, model={"kernel_size": 3}, init={"gamma_low": 0.5, "gamma_high": 0.95})
    with pytest.raises(ConfigError, match=r"^init.gamma_low/gamma_high=\[0.5, 0.95\] .*no surround pixel"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- divergence and hooks


def test_non_finite_loss_raises(cfg_dict, tmp_path):
    def poison(model):  # after epoch 1, a NaN in one depthwise weight
        with torch.no_grad():
            find_depthwise_convs(model)[0][1].weight[0, 0, 0, 0] = float("nan")
        return {}

    epochs = []
    cfg = make_cfg(cfg_dict, train={"epochs": 3})
    with pytest.raises(TrainingDiverged, match=r"^non-finite training loss nan at epoch 2, step 1 of 4 \(lr "):
        train(cfg, tmp_path / "run", metric_hooks=[poison], callback=lambda m, d: epochs.append(m["epoch"]))
    assert epochs == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_huge_lr_diverges(cfg_dict, tmp_path):
    cfg = make_cfg(cfg_dict, train={"lr": 1e30, "min_lr": 0.0, "grad_clip": None, "warmup_epochs": 0.0})
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step [2-4] of 4"):
        train(cfg, tmp_path / "run")


def test_hook_may_not_overwrite_trainer_metrics(cfg_dict, tmp_path):
    cfg = make_cfg(cfg_dict, train={"epochs": 1, "steps_per_epoch": 1})
    with pytest.raises(ValueError, match="returned 'val_top1', which the trainer already reports"):
        train(cfg, tmp_path / "run", metric_hooks=[lambda m: {"val_top1": 1.0}])


# --------------------------------------------------------------------------- the init inside train()


def _weights_after_init(cfg, tmp_path, monkeypatch):
    """The model's state right after build_run's apply_init (the run itself is one step)."""
    seen = {}

    def spy(model, init_cfg, seed):
        report = apply_init(model, init_cfg, seed)
        seen["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["dw"] = {f"{n}.weight" for n, _ in find_depthwise_convs(model)}
        return report

    monkeypatch.setattr(build_mod, "apply_init", spy)
    train(cfg, tmp_path)
    return seen


def test_dog_vs_kaiming_differ_in_depthwise_weights_only(cfg_dict, tmp_path, monkeypatch):
    short = {"epochs": 1, "steps_per_epoch": 1}
    dog = _weights_after_init(make_cfg(cfg_dict, train=short), tmp_path / "dog", monkeypatch)
    kai = _weights_after_init(make_cfg(cfg_dict, train=short, init={"scheme": "kaiming"}), tmp_path / "k", monkeypatch)
    assert dog["dw"] == kai["dw"] == {"blocks.0.0.fn.0.weight", "blocks.1.0.fn.0.weight"}
    for key, w in dog["state"].items():
        if key in dog["dw"]:
            assert not torch.allclose(w, kai["state"][key]), key
            # DoG: zero DC response per kernel, centre sign +1 for exactly half of them
            assert w.sum(dim=(1, 2, 3)).abs().max() < 1e-5
            assert (w[:, 0, 2, 2] > 0).sum().item() == 8
        else:
            assert torch.equal(w, kai["state"][key]), key  # same seed: everything else identical


def test_accuracies_are_clean_percentages(three_epochs):
    """val_top1 is a count over the validation set in percent: no float noise like 23.299999999999997."""
    _, _, result, _ = three_epochs
    for h in result.history:
        for key in ("val_top1", "val_top5"):
            assert h[key] == round(h[key], 6) and len(repr(h[key])) <= 10, h[key]
