"""The configuration tree: YAML + dotted overrides, one-line errors naming field, value and rule."""

import pytest

from echos_core.config import Config, ConfigError, apply_overrides, config_from_dict, describe, flatten, load_config


def test_defaults_are_valid_and_documented():
    cfg = config_from_dict({})
    assert cfg == Config()
    text = describe()
    for key in ("init.on_ratio", "init.scale", "model.kernel_size", "train.lr", "data.augment.mixup", "seed"):
        assert key in text
    assert all("#" in line and line.split("# ", 1)[1] for line in text.splitlines())  # every key has a doc


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: convmixer, kernel_size: 7}\ninit: {on_ratio: 0.25}\ntrain: {lr: 1e-3}\n")
    cfg = load_config(path, ["init.on_ratio=0.75", "train.channels_last=off", "seed=3", "model.dim=null"])
    assert (cfg.model.kernel_size, cfg.init.on_ratio, cfg.train.lr, cfg.train.channels_last, cfg.seed) == \
        (7, 0.75, 1e-3, "off", 3)
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


@pytest.mark.parametrize("override,message", [
    ("init.on_ratio=1.5", "init.on_ratio=1.5: must be >= 0.0 and <= 1.0"),
    ("init.gamma_low=0", "init.gamma_low=0.0: must be > 0.0 and < 1.0"),
    ("init.gamma_high=1", "init.gamma_high=1.0: must be > 0.0 and < 1.0"),
    ("init.scheme=xavier", "init.scheme='xavier': must be one of dog, kaiming, default, random-field"),
    ("init.scale=huge", "init.scale='huge': must be one of unit, kaiming, match"),
    ("init.fraction=-0.1", "init.fraction=-0.1: must be >= 0.0 and <= 1.0"),
    ("model.kernel_size=8", "model.kernel_size=8: must be odd"),
    ("model.kernel_size=15", "model.kernel_size=15: must be <= 13"),
    ("model.kernel_size=1", "model.kernel_size=1: must be >= 3"),
    ("train.epochs=0", "train.epochs=0: must be >= 1"),
    ("train.epochs=2.5", "train.epochs=2.5: must be an integer"),
    ("train.lr=fast", "train.lr='fast': must be a number"),
    ("train.lr=-1", "train.lr=-1.0: must be > 0.0"),
    ("train.device=tpu", "train.device='tpu': must be one of auto, cpu, cuda, cuda:N"),
    ("data.name=mnist", "data.name='mnist': must be one of embedded, digits, fashion_mnist, cifar10"),
    ("data.augment.randaugment=autoaug", "data.augment.randaugment='autoaug': must be a timm RandAugment"),
    ("init.colour=red", "init.colour='red': unknown key; allowed: init.scheme, init.gamma_low"),
    ("training.lr=1", "training.lr=1: unknown key; allowed:"),
    ("seed=-1", "seed=-1: must be >= 0"),
    ("init.on_ratio", "override must look like key=value"),
])
def test_bad_override_is_one_line_naming_field_value_rule(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_gamma_order_rule():
    with pytest.raises(ConfigError, match=r"init.gamma_high=0.3: must be >= init.gamma_low \(0.5\)"):
        load_config(None, ["init.gamma_low=0.5", "init.gamma_high=0.3"])


def test_unknown_key_in_yaml_names_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 2, learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"train.learning_rate=0.1: unknown key; allowed keys of train: epochs, "):
        load_config(path)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must contain a mapping"):
        load_config(bad)


def test_imagefolder_needs_root():
    with pytest.raises(ConfigError, match="data.root=None: is required when data.name is 'imagefolder'"):
        load_config(None, ["data.name=imagefolder"])


def test_apply_overrides_with_dict():
    d = apply_overrides({}, {"init.on_ratio": 0.1, "model.name": "hornet_cifar"})
    assert d == {"init": {"on_ratio": 0.1}, "model": {"name": "hornet_cifar"}}
