"""echos_core.models: every family builds, runs, trains and honours its overrides."""

import math

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from echos_core.config import ConfigError, ModelConfig, config_from_dict
from echos_core.inits import find_depthwise_convs
from echos_core.models import create_model, model_family
from echos_core.models.hornet import GnConv


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs) -> nn.Module:
    """A weightless copy: free to build, enough for shapes, parameter and FLOP counts."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


# --------------------------------------------------------------------------- build, run, train

# (model config, number of depthwise convs it must have); small widths keep CPU time low
FAMILIES = {
    "convnext_atto": (dict(name="convnext_atto"), 2 + 2 + 6 + 2),
    "convnext_cifar": (dict(name="convnext_cifar", dim=8), 2 + 2 + 4 + 2),
    "convmixer": (dict(name="convmixer", dim=16, depth=3), 3),
    "hornet_cifar": (dict(name="hornet_cifar", dim=8), 2 + 2 + 4 + 2),
}
CASES = [(f, k) for f in FAMILIES for k in (3, 5, 7, 9, 13)]


@pytest.mark.parametrize("family,k", CASES, ids=[f"{f}-k{k}" for f, k in CASES])
def test_forward_backward_and_kernel_size(family, k):
    overrides, n_dw = FAMILIES[family]
    torch.manual_seed(0)
    model = create_model(ModelConfig(**overrides, kernel_size=k), num_classes=7, image_size=32)
    dws = find_depthwise_convs(model)
    assert len(dws) == n_dw
    assert all(conv.weight.shape[1:] == (1, k, k) and conv.groups == conv.in_channels for _, conv in dws)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    for name, conv in dws:
        assert torch.isfinite(conv.weight.grad).all(), name
        assert conv.weight.grad.abs().sum() > 0, name


def test_mobilenetv3_runs_with_its_own_kernels():
    model = create_model(ModelConfig(name="mobilenetv3_small_100", drop_path=0.1), num_classes=4, in_chans=1)
    sizes = [conv.kernel_size[0] for _, conv in find_depthwise_convs(model)]
    assert sizes == [3, 3, 3] + [5] * 8
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(torch.isfinite(c.weight.grad).all() for _, c in find_depthwise_convs(model))


def test_hornet_tiny_forward_with_kernel_override():
    model = create_model(ModelConfig(name="hornet_tiny", kernel_size=9), num_classes=10).eval()
    dws = find_depthwise_convs(model)
    assert len(dws) == 2 + 3 + 18 + 2
    assert {c.weight.shape[2:] for _, c in dws} == {(9, 9)}
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["convnext_cifar", "hornet_cifar"])
def test_cifar_variants_keep_a_4x4_last_map(name):
    model = on_meta(name)
    assert model.forward_features(torch.zeros(2, 3, 32, 32, device="meta")).shape == (2, 256, 4, 4)


# --------------------------------------------------------------------------- sizes


def test_convmixer_cifar_parameter_count():
    d, depth, k, p, classes = 256, 8, 5, 2, 10
    stem = 3 * d * p * p + d + 2 * d  # patch conv + bias, BatchNorm
    block = (d * k * k + d) + 2 * d + (d * d + d) + 2 * d  # depthwise, BN, pointwise, BN
    head = d * classes + classes
    expected = stem + depth * block + head
    assert expected == 594_186
    assert n_params(create_model(ModelConfig(name="convmixer_cifar"), num_classes=10)) == expected


def test_convmixer_defaults_and_config_overrides():
    model = create_model(ModelConfig(name="convmixer"), num_classes=10)
    assert n_params(model) == 84_618  # dim 128, depth 4, kernel 5, patch 2
    model = create_model(ModelConfig(name="convmixer", dim=32, depth=2, kernel_size=9, patch_size=4), num_classes=10)
    assert (model.stem[0].out_channels, len(model.blocks), model.stem[0].stride) == (32, 2, (4, 4))


def test_timm_convmixer_takes_overrides_and_keeps_its_activation():
    model = create_model(ModelConfig(name="convmixer_768_32", dim=32, depth=2, kernel_size=3, patch_size=4),
                         num_classes=10)
    assert isinstance(model.stem[1], nn.ReLU)  # convmixer_768_32 is the ReLU one
    assert (model.stem[0].out_channels, len(model.blocks), model.stem[0].stride) == (32, 2, (4, 4))
    assert [c.kernel_size for _, c in find_depthwise_convs(model)] == [(3, 3)] * 2


def test_hornet_sizes_match_the_paper():
    # paper, Table 1: HorNet-T 7x7 22M params 4.0G FLOPs; HorNet-S 7x7 50M, 8.8G
    for name, params, gmacs in (("hornet_tiny", 22_409_512, 3.97), ("hornet_small", 49_528_264, 8.81)):
        model = on_meta(name)
        assert n_params(model) == params
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 224, 224, device="meta"))
        assert counter.get_total_flops() / 2e9 == pytest.approx(gmacs, abs=0.01)
    assert n_params(on_meta("hornet_cifar")) == 2_720_458
    assert n_params(on_meta("convnext_cifar")) == 1_901_514


def test_convnext_dim_and_patch_overrides():
    model = create_model(ModelConfig(name="convnext_atto", dim=16, patch_size=2), num_classes=3, image_size=32)
    assert [s.blocks[0].conv_dw.in_channels for s in model.stages] == [16, 32, 64, 128]
    assert model.stem[0].stride == (2, 2)


# --------------------------------------------------------------------------- gnConv and HorNet details


@pytest.mark.parametrize("order,widths", [(2, [32, 64]), (3, [16, 32, 64]), (5, [4, 8, 16, 32, 64])])
def test_gnconv_widths(order, widths):
    g = GnConv(64, order, kernel_size=5)
    assert g.widths == widths
    assert g.proj_in.out_channels == 2 * 64 == widths[0] + sum(widths)
    assert g.dwconv.weight.shape == (sum(widths), 1, 5, 5)
    assert [(pw.in_channels, pw.out_channels) for pw in g.pws] == list(zip(widths[:-1], widths[1:]))


def test_gnconv_with_unit_gates_passes_its_first_channels():
    """Identity-like 1x1 convs, depthwise bias 2 and scale 0.5 (every gate 1): out = [x0, x1, 0, 0]."""
    g = GnConv(4, order=2, kernel_size=3, scale=0.5)
    with torch.no_grad():
        for conv in (g.proj_in, g.pws[0], g.proj_out):
            conv.bias.zero_()
        g.proj_in.weight.zero_()
        g.proj_in.weight[:2, :2, 0, 0] = torch.eye(2)  # p0 = x[:, :2]
        g.dwconv.weight.zero_()
        g.dwconv.bias.fill_(2.0)  # every gate = 2 * scale = 1
        g.pws[0].weight.zero_()
        g.pws[0].weight[:2, :2, 0, 0] = torch.eye(2)  # p1 = [p0, 0] * gate
        g.proj_out.weight.copy_(torch.eye(4)[:, :, None, None])
    x = torch.randn(1, 4, 5, 5)
    expected = torch.cat([x[:, :2], torch.zeros_like(x[:, :2])], dim=1)
    torch.testing.assert_close(g(x), expected)


def test_hornet_drop_path_rises_linearly_and_orders_rise_by_stage():
    model = on_meta("hornet_tiny", drop_path_rate=0.2)
    blocks = [b for stage in model.stages for b in stage[1:]]
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert all(math.isclose(b - a, 0.2 / 24) for a, b in zip(rates, rates[1:]))
    assert [len(stage[1].gnconv.widths) for stage in model.stages] == [2, 3, 4, 5]


def test_drop_rate_reaches_the_head():
    assert create_model(ModelConfig(name="hornet_cifar", dim=8, drop_rate=0.3), 10).head_drop.p == 0.3
    assert create_model(ModelConfig(name="convmixer", dim=8, depth=1, drop_rate=0.3), 10).head_drop.p == 0.3


# --------------------------------------------------------------------------- registry


def test_registered_with_timm():
    assert timm.list_models("hornet*") == ["hornet_cifar", "hornet_small", "hornet_tiny"]
    assert {"convmixer", "convmixer_cifar", "convnext_cifar"} <= set(timm.list_models())
    assert [model_family(n) for n in ("convnext_atto", "convnext_cifar", "hornet_tiny", "convmixer_768_32",
                                      "convmixer_cifar", "efficientnet_b0")] == [
        "convnext", "convnext", "hornet", "convmixer", "convmixer", None]
    with pytest.raises(ValueError, match="no pretrained"):
        timm.create_model("hornet_cifar", pretrained=True)


def test_same_seed_same_weights():
    cfg = ModelConfig(name="hornet_cifar", dim=8)
    torch.manual_seed(3)
    a = create_model(cfg, 10, image_size=32).state_dict()
    torch.manual_seed(3)
    b = create_model(cfg, 10, image_size=32).state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


# --------------------------------------------------------------------------- bad input

BAD = [
    (dict(name="convnext_atto", kernel_size=8), "model.kernel_size=8: must be odd"),
    (dict(name="convnxt_atto"), "model.name='convnxt_atto': unknown model; close names: convnext_atto"),
    (dict(name="mobilenetv3_small_100", kernel_size=5), "model.kernel_size=5: mobilenetv3_small_100 takes no"),
    (dict(name="efficientnet_b0", dim=32), "model.dim=32: efficientnet_b0 takes no dim override"),
    (dict(name="convnext_atto", depth=3), "model.depth=3: convnext_atto takes no depth override; only ConvMixer"),
    (dict(name="convnext_atto_ols", patch_size=2), "model.patch_size=2: convnext_atto_ols has no patchify stem"),
    (dict(name="convmixer", drop_path=0.1), "model.drop_path=0.1: convmixer does not take it"),
    (dict(name="hornet_cifar", dim=9), "model.dim=9: HorNet needs an even base width"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_config_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        cfg = config_from_dict({"model": overrides})  # the rules of the config boundary
        create_model(cfg.model, num_classes=10)  # what only building the model can tell
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_too_small_image_is_reported_at_build_time():
    with pytest.raises(ConfigError, match=r"^data.image_size=16: convnext_atto cannot take 16x16 inputs"):
        create_model(ModelConfig(name="convnext_atto"), num_classes=10, image_size=16)
