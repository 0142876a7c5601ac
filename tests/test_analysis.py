"""Kernel analysis: CSI, DoG fit, k-means naming, shape families, the per-epoch hook, `echos analyze`."""

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from echos_core.analysis import (analyse_model, centre_surround_index, cluster_kernels, dense_layers,
                                 depthwise_layers, epoch_kernel_metrics, fit_dog, fit_shapes, normalise_kernels)
from echos_core.analysis.kernels import auto_threshold, centre_surround_template, name_clusters
from echos_core.config import InitConfig
from echos_core.dog import dog_kernels
from echos_core.inits import apply_init

# --------------------------------------------------------------------------- synthetic kernels


def synthetic(k: int, n: int, seed: int, noise: float = 0.05):
    """A third each of On DoG, Off DoG (gamma U[0.3, 0.7], scale U[0.2, 2], relative noise) and pure noise."""
    rng = np.random.default_rng(seed)
    truth = np.array(["on", "off", "other"])[rng.integers(0, 3, n)]
    gammas = rng.uniform(0.3, 0.7, n)
    d = dog_kernels(k, torch.from_numpy(gammas), torch.from_numpy(truth == "on")).double().numpy()
    d /= np.linalg.norm(d.reshape(n, -1), axis=1)[:, None, None]
    scale = rng.uniform(0.2, 2.0, n)[:, None, None]
    w = scale * (d + noise * rng.standard_normal(d.shape) / k)  # noise: ~5% of the kernel's norm
    w[truth == "other"] = (scale * rng.standard_normal(d.shape) / k)[truth == "other"]
    return w, truth, gammas


def depthwise_model(k: int = 7, dims=(64, 128, 256)) -> nn.Module:
    return nn.Sequential(*[nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c in dims])


# --------------------------------------------------------------------------- CSI


def test_csi_sign_bounds_and_scale_free():
    w, truth, _ = synthetic(7, 600, seed=1)
    csi = centre_surround_index(w)
    assert np.all(np.abs(csi) <= 1.0 + 1e-12)
    assert np.all(csi[truth == "on"] > 0.3) and np.all(csi[truth == "off"] < -0.3)
    assert csi[truth == "on"].mean() > 0.7 and csi[truth == "off"].mean() < -0.7
    noise = csi[truth == "other"]
    assert abs(noise.mean()) < 0.05 and np.abs(noise).mean() < 0.3
    np.testing.assert_allclose(centre_surround_index(37.0 * w), csi, atol=1e-12)
    fixed = centre_surround_index(w, "fixed")  # r = (k + 1) / 4: unbiased for noise, weaker for small centres
    assert np.all(fixed[truth == "on"] > 0) and np.all(fixed[truth == "off"] < 0)
    assert np.abs(fixed[truth == "other"]).mean() < 0.15  # ~ sqrt(2/pi) / k for i.i.d. noise


def test_csi_template_is_centre_mean_minus_surround_mean():
    u = centre_surround_template(5, 1.5)  # centre = the 3x3 middle (d <= 1.5), surround = the 16 others
    ref = np.full((5, 5), -1 / 16)
    ref[1:4, 1:4] = 1 / 9
    np.testing.assert_allclose(u, ref / np.linalg.norm(ref))
    assert abs(u.sum()) < 1e-12
    w = np.zeros((1, 5, 5))
    w[0, 2, 2] = 1.0
    assert centre_surround_index(w, 1.5)[0] == pytest.approx(u[2, 2])


# --------------------------------------------------------------------------- DoG fit


@pytest.mark.parametrize("k", [5, 7, 9])
def test_dog_fit_recovers_gamma_sign_and_amplitude(k):
    rng = np.random.default_rng(k)
    gammas = rng.uniform(0.3, 0.7, 200)
    on = rng.random(200) < 0.5
    amp = rng.uniform(0.1, 3.0, 200)
    w = dog_kernels(k, torch.from_numpy(gammas), torch.from_numpy(on)).double().numpy() * amp[:, None, None]
    fit = fit_dog(w)
    assert np.abs(fit.gamma - gammas).max() < 0.05
    assert np.array_equal(fit.on, on)
    np.testing.assert_allclose(np.abs(fit.amplitude), amp, rtol=0.02)
    assert fit.r2.min() > 0.99


def test_dog_fit_r2_low_for_noise():
    w = np.random.default_rng(0).standard_normal((500, 7, 7))
    fit = fit_dog(w)
    assert fit.r2.mean() < 0.1 and np.quantile(fit.r2, 0.99) < 0.35
    np.testing.assert_allclose(fit.residual, 1 - fit.r2)


# --------------------------------------------------------------------------- clustering


@pytest.mark.parametrize("k", [5, 7])
def test_clustering_names_on_off_other(k):
    w, truth, _ = synthetic(k, 1500, seed=k)
    cl = cluster_kernels(w, 3)
    assert np.mean(cl.labels == truth) >= 0.95
    assert sorted(cl.names) == ["off", "on", "other"]
    fr = cl.fractions()
    for name in ("on", "off", "other"):
        assert fr[name] == pytest.approx(np.mean(truth == name), abs=0.05)


def test_cluster_names_do_not_depend_on_cluster_index_or_order():
    w, truth, _ = synthetic(7, 1200, seed=3)
    perm = np.random.default_rng(0).permutation(len(w))
    seen_orders = set()
    for seed in range(4):
        cl = cluster_kernels(w[perm], 3, seed=seed)
        assert np.mean(cl.labels == truth[perm]) >= 0.95
        seen_orders.add(tuple(cl.names))
    assert len(seen_orders) > 1  # the indices really moved; the names followed the kernels


@pytest.mark.parametrize("options", [dict(normalise="zscore"), dict(sign_symmetric=True), dict(max_fit=300)])
def test_clustering_options(options):
    w, truth, _ = synthetic(7, 900, seed=5)
    cl = cluster_kernels(w, 3, **options)
    assert np.mean(cl.labels == truth) >= 0.95


@pytest.mark.parametrize("k", [3, 5, 7])
def test_noise_is_never_named_on_or_off(k):
    """The automatic threshold max(0.2, 1.5 / k) sits above what k-means finds in i.i.d. noise."""
    assert auto_threshold(3) == pytest.approx(0.5) and auto_threshold(9) == pytest.approx(0.2)
    for seed in range(6):
        for n in (48, 600):
            w = np.random.default_rng([k, seed, n]).standard_normal((n, k, k))
            assert cluster_kernels(w, 3, seed=seed).fractions()["other"] == 1.0


def test_name_clusters_threshold_and_uniqueness():
    assert name_clusters(np.array([0.8, 0.5, -0.6, 0.05]), 0.2) == ["on", "on", "off", "other"]
    assert name_clusters(np.array([0.5, 0.8, -0.6, 0.05]), 0.2, unique_names=True) == ["other", "on", "off", "other"]
    assert name_clusters(np.array([np.nan, -0.3, -0.1]), 0.2) == ["other", "off", "other"]


def test_normalise_kernels():
    w = np.random.default_rng(0).standard_normal((10, 5, 5)) * 3 + 1
    assert np.allclose(np.linalg.norm(normalise_kernels(w, "l2"), axis=1), 1)
    z = normalise_kernels(w, "zscore")
    assert np.allclose(z.mean(axis=1), 0) and np.allclose(z.std(axis=1), 1)
    assert np.array_equal(normalise_kernels(w, "none"), w.reshape(10, -1))
    with pytest.raises(ValueError, match="normalise='max'"):
        normalise_kernels(w, "max")
    with pytest.raises(ValueError, match="n_clusters=0"):
        cluster_kernels(w, 0)


# --------------------------------------------------------------------------- extraction


def test_extraction_depthwise_and_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 5, groups=8), nn.Conv2d(8, 40, 3),
                          nn.Conv2d(40, 40, (1, 5), groups=40), nn.Conv2d(40, 40, 1))
    dw = depthwise_layers(model)
    assert [(layer.name, layer.kernels.shape) for layer in dw] == [("1", (8, 5, 5))]  # (1, 5) and 1x1 left out
    np.testing.assert_array_equal(dw[0].kernels, model[1].weight.detach()[:, 0].numpy())
    dense = dense_layers(model, max_per_layer=100, seed=0)
    assert [(layer.name, len(layer), layer.total) for layer in dense] == [("0", 24, 24), ("2", 100, 320)]
    again = dense_layers(model, max_per_layer=100, seed=0)
    assert np.array_equal(dense[1].index, again[1].index)
    i = dense[1].index[7]
    np.testing.assert_array_equal(dense[1].kernels[7], model[2].weight.detach()[i // 8, i % 8].numpy())


# --------------------------------------------------------------------------- per-epoch metric


def _timed(model):
    epoch_kernel_metrics(model)  # first call pays the scikit-learn import
    t = time.perf_counter()
    out = epoch_kernel_metrics(model)
    return out, time.perf_counter() - t


def test_epoch_metrics_dog_init_on_ratio():
    model = nn.Sequential(depthwise_model(7, (256, 512, 1024, 1024)), depthwise_model(5, (512,)))
    apply_init(model, InitConfig(scheme="dog", on_ratio=0.25), seed=0)
    m, dt = _timed(model)
    n = int(m["kernels/count"])
    print(f"\nepoch_kernel_metrics: {n} kernels (7x7 and 5x5) in {dt * 1000:.0f} ms")
    assert n == 3328
    assert m["kernels/on_fraction"] == pytest.approx(0.25, abs=0.05)
    assert m["kernels/off_fraction"] == pytest.approx(0.75, abs=0.05)
    assert m["kernels/other_fraction"] < 0.05
    assert m["kernels/dog_r2_mean"] > 0.99 and m["kernels/csi_mean"] < -0.3
    assert epoch_kernel_metrics(model) == m  # deterministic
    assert dt < 2.0  # budget ~0.2 s on an idle machine; loose here for a shared CI box


def test_epoch_metrics_kaiming_is_other():
    model = depthwise_model(7)
    apply_init(model, InitConfig(scheme="kaiming"), seed=0)
    m, dt = _timed(model)
    print(f"\nepoch_kernel_metrics (kaiming): {int(m['kernels/count'])} kernels in {dt * 1000:.0f} ms")
    assert m["kernels/other_fraction"] > 0.9
    assert abs(m["kernels/csi_mean"]) < 0.05 and m["kernels/dog_r2_mean"] < 0.15
    assert epoch_kernel_metrics(nn.Sequential(nn.Conv2d(3, 8, 3))) == {}


# --------------------------------------------------------------------------- shape families


def _grid(k):
    ax = np.arange(k) - (k - 1) / 2
    return np.meshgrid(ax, ax, indexing="xy")  # x = column offset, y = row offset


def test_shape_families_identify_synthetic_kernels():
    k, s, th = 7, 1.3, np.radians(23.0)  # off the sigma and orientation grids
    x, y = _grid(k)
    u, v = x * np.cos(th) + y * np.sin(th), -x * np.sin(th) + y * np.cos(th)
    g = np.exp(-(x**2 + y**2) / (2 * s**2))
    shapes = {"d1": u * g, "d2": (u**2 / s**2 - 1) * g, "saddle": (u**2 - v**2) * g, "gaussian": g,
              "edge": np.tanh(u / 0.3), "dog": dog_kernels(7, torch.tensor([0.47]), False)[0].double().numpy()}
    rng = np.random.default_rng(0)
    w = np.stack([t / np.linalg.norm(t) for t in shapes.values()])
    w = -2.0 * (w + 0.02 * rng.standard_normal(w.shape))  # flipped sign and scaled: amplitude absorbs both
    fit = fit_shapes(w)
    assert list(fit.family) == list(shapes)
    assert fit.r2.min() > 0.9
    d1, d2 = 0, 1
    assert abs(np.degrees(fit.params[d1, 1]) - 23.0) < 6 and abs(np.degrees(fit.params[d2, 1]) - 23.0) < 6
    assert fit.params[5, 0] == pytest.approx(0.47, abs=0.03)  # the DoG's gamma


def test_shape_fit_noise_is_none():
    fit = fit_shapes(np.random.default_rng(1).standard_normal((500, 7, 7)))
    assert fit.fractions()["none"] > 0.97 and fit.r2.mean() < 0.25


# --------------------------------------------------------------------------- whole model and CLI


def test_analyse_model_depthwise_and_dense(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), depthwise_model(7, (128, 256)))
    apply_init(model, InitConfig(scheme="dog", on_ratio=0.5), seed=0)
    a = analyse_model(model, dense_per_layer=32)
    dw = a.overall("depthwise")
    assert dw["kernels"] == 384 and dw["on"] == pytest.approx(0.5, abs=0.02) and dw["other"] < 0.02
    assert [s.kind for s in a.layers] == ["depthwise", "depthwise", "dense"]
    dense = a.overall("dense")  # PyTorch's default (uniform) init: no centre-surround beyond chance
    assert dense["kernels"] == 32 and dense["other"] == 1.0 and dense["dog_r2_mean"] < 0.5
    paths = a.write(tmp_path, max_kernels=16)
    names = {p.name for p in paths}
    assert {"analysis.json", "analysis.csv", "kernels.csv", "depthwise_k7_on.png", "depthwise_k7_off.png",
            "depthwise_k7_centroids.png", "dense_k3_centroids.png", "dense_k3_other.png"} <= names
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert data["overall"]["depthwise"]["on"] == pytest.approx(dw["on"])
    assert len((tmp_path / "kernels.csv").read_text().splitlines()) == 1 + 384 + 32


def test_echos_analyze_on_a_trained_checkpoint(tmp_path, cfg_dict, capsys):
    from echos_core.cli import main
    from echos_core.config import config_from_dict
    from echos_core.trainer import train

    cfg_dict["train"]["epochs"] = 1
    cfg_dict["init"] = {"on_ratio": 0.25}
    result = train(config_from_dict(cfg_dict), tmp_path / "run", metric_hooks=[epoch_kernel_metrics])
    assert result.history[-1]["kernels/on_fraction"] == pytest.approx(0.25, abs=0.05)

    assert main(["analyze", str(tmp_path / "run"), "--clusters", "3", "--normalise", "l2"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0" in out and "(all layers)" in out
    folder = tmp_path / "run" / "analysis"
    assert (folder / "analysis.csv").is_file() and (folder / "depthwise_k5_on.png").stat().st_size > 1000
    rows = (folder / "analysis.csv").read_text().splitlines()
    assert rows[0].startswith("kind,layer,kernel_size") and len(rows) == 1 + 2  # two ConvMixer blocks

    from echos_core.analysis import model_from_checkpoint
    from echos_core.checkpoint import load_checkpoint

    model, _, info = model_from_checkpoint(tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")["model"]
    assert info["num_classes"] == 4 and info["epoch"] == 1
    name, layer = depthwise_layers(model)[0].name, depthwise_layers(model)[0]
    np.testing.assert_array_equal(layer.kernels, state[f"{name}.weight"][:, 0].numpy())


def test_echos_analyze_errors_are_one_line(tmp_path, capsys):
    from echos_core.cli import main

    assert main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("echos: error: CHECKPOINT=") and "\n" not in err
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["analyze", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint=" in err and "\n" not in err
    assert main(["analyze", str(bad), "--clusters", "0"]) == 2
    assert "--clusters=0" in capsys.readouterr().err
