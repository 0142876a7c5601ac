"""Init schemes on depthwise convolutions: counts, ranges, scale rules, determinism, isolation."""

import copy
import math

import pytest
import torch
from torch import nn

from echos_core.config import ConfigError, InitConfig
from echos_core.dog import dog_kernels
from echos_core.inits import INIT_SCHEMES, apply_init, check_init, find_depthwise_convs, get_init


class TinyNet(nn.Module):
    """Dense stem, two depthwise layers (k=7 with 40 kernels, k=5 with 2x multiplier), a 1x1 and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 20, 3, padding=1)
        self.dw1 = nn.Conv2d(20, 20, 7, padding=3, groups=20)
        self.pw = nn.Conv2d(20, 20, 1)
        self.dw2 = nn.Conv2d(20, 40, 5, padding=2, groups=20)  # channel multiplier 2: 40 kernels
        self.norm = nn.BatchNorm2d(40)
        self.head = nn.Linear(40, 3)

    def forward(self, x):
        x = self.dw2(self.pw(self.dw1(self.stem(x))))
        return self.head(self.norm(x).mean((2, 3)))


def _dw_weights(model):
    return {n: m.weight.detach().clone()[:, 0] for n, m in find_depthwise_convs(model)}


def _centre_sign(kernels):
    k = kernels.shape[-1]
    return torch.sign(kernels[:, k // 2, k // 2])


def test_registry_has_schemes_and_unknown_lists_them():
    assert {"dog", "kaiming", "default", "random-field"} <= set(INIT_SCHEMES)
    with pytest.raises(ConfigError, match=r"init.scheme='lecun': unknown init scheme; known: dog, kaiming, default, random-field"):
        get_init("lecun")


def test_depthwise_found_by_structure_only():
    names = [n for n, _ in find_depthwise_convs(TinyNet())]
    assert names == ["dw1", "dw2"]


@pytest.mark.parametrize("on_ratio", [0.0, 0.1, 0.25, 0.5, 0.77, 1.0])
def test_exact_on_count_per_layer(on_ratio):
    model = TinyNet()
    report = apply_init(model, InitConfig(scheme="dog", on_ratio=on_ratio), seed=3)
    for layer, (name, w) in zip(report.layers, _dw_weights(model).items()):
        n = w.shape[0]
        expected_on = int(round(on_ratio * n))
        signs = _centre_sign(w)
        assert int((signs > 0).sum()) == expected_on == layer.on
        assert int((signs < 0).sum()) == n - expected_on == layer.off
        assert layer.changed == n


def test_on_positions_are_random_not_a_prefix():
    model = TinyNet()
    apply_init(model, InitConfig(scheme="dog", on_ratio=0.5), seed=0)
    on = (_centre_sign(model.dw1.weight.detach()[:, 0]) > 0).tolist()
    assert on != sorted(on, reverse=True) and on != sorted(on)


def test_gamma_within_range():
    # every unit-scale DoG kernel equals the DoG of some gamma in [low, high]: recover gamma by grid search
    low, high = 0.35, 0.55
    model = TinyNet()
    apply_init(model, InitConfig(scheme="dog", gamma_low=low, gamma_high=high, on_ratio=1.0), seed=1)
    w = model.dw1.weight.detach()[:, 0]
    grid = torch.linspace(0.05, 0.75, 701)
    bank = dog_kernels(7, grid, True).flatten(1)  # (701, 49)
    err = torch.cdist(w.flatten(1), bank)  # (40, 701)
    best = grid[err.argmin(dim=1)]
    assert float(err.min(dim=1).values.max()) < 1e-3
    assert float(best.min()) >= low - 2e-3 and float(best.max()) <= high + 2e-3
    assert float(best.max() - best.min()) > 0.5 * (high - low)  # actually spread over the range


def test_non_depthwise_parameters_bit_identical():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, InitConfig(scheme="dog", noise=0.1), seed=0)
    after = model.state_dict()
    for k, v in before.items():
        if k in ("dw1.weight", "dw2.weight"):
            assert not torch.equal(v, after[k])
        else:
            assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("scheme", ["dog", "kaiming", "random-field"])
def test_same_seed_same_tensors_different_seed_different(scheme):
    cfg = InitConfig(scheme=scheme, noise=0.05, fraction=0.6)
    base = TinyNet()  # the unreplaced kernels keep the base init, so start all three from one model
    a, b, c = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    apply_init(a, cfg, seed=7)
    apply_init(b, cfg, seed=7)
    apply_init(c, cfg, seed=8)
    assert torch.equal(a.dw1.weight, b.dw1.weight) and torch.equal(a.dw2.weight, b.dw2.weight)
    assert not torch.equal(a.dw1.weight, c.dw1.weight)


def test_scale_unit_gives_lobe_norms():
    model = TinyNet()
    apply_init(model, InitConfig(scheme="dog", scale="unit", gamma_low=0.5, gamma_high=0.5), seed=0)
    norms = model.dw1.weight.detach()[:, 0].flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 0.409), atol=1e-3)  # METHOD.md: k=7, gamma=0.5


@pytest.mark.parametrize("scheme", ["dog", "random-field"])
def test_scale_kaiming_gives_sqrt2(scheme):
    model = TinyNet()
    apply_init(model, InitConfig(scheme=scheme, scale="kaiming"), seed=0)
    for _, w in _dw_weights(model).items():
        norms = w.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, math.sqrt(2)), atol=1e-5)


@pytest.mark.parametrize("scheme", ["dog", "random-field"])
def test_scale_match_gives_replaced_norm(scheme):
    model = TinyNet()
    before = {n: float(w.flatten(1).norm(dim=1).pow(2).mean().sqrt()) for n, w in _dw_weights(model).items()}
    report = apply_init(model, InitConfig(scheme=scheme, scale="match"), seed=0)
    for layer, (n, w) in zip(report.layers, _dw_weights(model).items()):
        norms = w.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, before[n]), rtol=1e-5)
        assert layer.norm_before == pytest.approx(before[n])


def test_random_field_unit_norm_and_smooth():
    conv = nn.Conv2d(2000, 2000, 7, groups=2000)
    apply_init(nn.Sequential(conv), InitConfig(scheme="random-field", scale="unit", length_scale=2.0), seed=0)
    w = conv.weight.detach()[:, 0]
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(2000), atol=1e-5)
    # neighbouring pixels strongly correlated (smooth field), far pixels much less
    flat = w.flatten(1)
    corr = torch.corrcoef(flat.T)
    near = corr[24, 25]  # centre and its right neighbour
    far = corr[0, 48]  # opposite corners
    assert float(near) > 0.6 and float(far) < float(near) - 0.4


def test_kaiming_scheme_statistics():
    conv = nn.Conv2d(2000, 2000, 7, groups=2000)
    model = nn.Sequential(conv)
    apply_init(model, InitConfig(scheme="kaiming"), seed=0)
    std = float(conv.weight.detach().std())
    assert std == pytest.approx(math.sqrt(2 / 49), rel=0.02)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_fraction_replaces_exactly_that_many(fraction):
    model = TinyNet()
    before = model.dw1.weight.detach().clone()
    report = apply_init(model, InitConfig(scheme="dog", fraction=fraction), seed=0)
    changed = (model.dw1.weight.detach() != before).flatten(1).any(dim=1)
    assert int(changed.sum()) == int(round(fraction * 20)) == report.layers[0].changed


def test_noise_perturbs_relative_to_rms():
    a, b = TinyNet(), TinyNet()
    apply_init(a, InitConfig(scheme="dog", noise=0.0), seed=0)
    apply_init(b, InitConfig(scheme="dog", noise=0.2), seed=0)
    wa, wb = a.dw1.weight.detach()[:, 0], b.dw1.weight.detach()[:, 0]
    # the kernels are drawn before the noise with the same generator state, so the difference is the noise
    rel = ((wb - wa).flatten(1).pow(2).mean(1).sqrt() / wa.flatten(1).pow(2).mean(1).sqrt()).mean()
    assert float(rel) == pytest.approx(0.2, rel=0.2)


def test_default_scheme_changes_nothing():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init(model, InitConfig(scheme="default"), seed=0)
    assert report.changed == 0 and report.kernels == 60
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_report_counts():
    report = apply_init(TinyNet(), InitConfig(scheme="dog", fraction=0.5, on_ratio=0.5), seed=0)
    d = report.to_dict()
    assert d["kernels"] == 60 and d["changed"] == 30
    assert [layer["changed"] for layer in d["layers"]] == [10, 20]
    assert [layer["kernel_size"] for layer in d["layers"]] == [7, 5]
    assert "changed 30 of 60" in report.summary()


def test_model_without_depthwise_is_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(ConfigError, match="has no depthwise convolutions"):
        apply_init(model, InitConfig(scheme="dog"))


def test_gamma_range_too_wide_for_kernel_is_error_before_any_change():
    model = nn.Sequential(nn.Conv2d(8, 8, 7, groups=8), nn.Conv2d(8, 8, 3, groups=8))
    before = model[0].weight.detach().clone()
    with pytest.raises(ConfigError, match=r"layer 1: gamma=0.8 with kernel_size=3: leaves no surround"):
        apply_init(model, InitConfig(scheme="dog", gamma_low=0.3, gamma_high=0.8))
    assert torch.equal(before, model[0].weight)  # checked before any layer was touched


def test_check_init_returns_convs():
    convs = check_init(TinyNet(), InitConfig())
    assert [n for n, _ in convs] == ["dw1", "dw2"]
