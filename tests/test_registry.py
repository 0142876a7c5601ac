"""The init registry is the one source of scheme names and the config keys each scheme reads."""

import dataclasses

import pandas as pd
import pytest
import torch

from echos_core import registry
from echos_core.config import ConfigError, InitConfig, config_from_dict
from echos_core.inits import LayerReport, apply_init
from echos_core.registry import applicable_keys, baselines, register_init, report_rank, scheme_names
from echos_core.report.stats import arm_order, assign_arms
from echos_core.tracking import run_params


@pytest.fixture
def plugin_scheme():
    """A scheme registered from outside the package (this file), removed again afterwards."""

    @register_init("test-constant", keys=("init.fraction",))
    def init_constant_(conv, cfg, g, name=""):
        with torch.no_grad():
            conv.weight.fill_(cfg.fraction)
        return LayerReport(name=name, kernels=conv.weight.shape[0], changed=conv.weight.shape[0])

    yield "test-constant"
    del registry.INIT_SCHEMES["test-constant"]


def test_builtin_schemes_and_their_keys():
    assert scheme_names()[:4] == ("dog", "kaiming", "default", "random-field")
    assert applicable_keys("default") == ()
    assert applicable_keys("kaiming") == ("init.fraction",)
    assert "init.on_ratio" in applicable_keys("dog") and "init.length_scale" not in applicable_keys("dog")
    assert "init.length_scale" in applicable_keys("random-field") and "init.on_ratio" not in applicable_keys("random-field")
    assert baselines() == ("kaiming", "default")


def test_every_declared_key_is_an_init_config_field():
    fields = {f"init.{f.name}" for f in dataclasses.fields(InitConfig)}
    for name in scheme_names():
        assert set(applicable_keys(name)) <= fields, name


def test_unknown_scheme_keys_and_bad_declarations_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^init.scheme='lecun': unknown init scheme; known: dog, kaiming"):
        applicable_keys("lecun")
    with pytest.raises(ValueError, match=r"register_init\('x'\): keys \['on_ratio'\] must be init.\* config keys"):
        register_init("x", keys=("on_ratio",))
    assert "x" not in scheme_names()


def test_config_validation_asks_the_registry(plugin_scheme):
    cfg = config_from_dict({"init": {"scheme": plugin_scheme, "fraction": 0.25}})
    assert cfg.init.scheme == plugin_scheme
    conv = torch.nn.Conv2d(4, 4, 3, groups=4)
    report = apply_init(torch.nn.Sequential(conv), cfg.init, seed=0)
    assert report.changed == 4 and torch.all(conv.weight == 0.25)


def test_unregistered_scheme_is_refused_by_config_with_the_known_list():
    with pytest.raises(ConfigError, match=r"^init.scheme='nope': must be one of dog, kaiming, default, random-field"):
        config_from_dict({"init": {"scheme": "nope"}})


def test_mlflow_params_hold_only_the_keys_the_scheme_reads(plugin_scheme):
    def init_params(scheme):
        return sorted(k for k in run_params({"init": dataclasses.asdict(InitConfig(scheme=scheme)), "seed": 1})
                      if k.startswith("init."))

    assert init_params("default") == ["init.scheme"]
    assert init_params("kaiming") == ["init.fraction", "init.scheme"]
    assert init_params(plugin_scheme) == ["init.fraction", "init.scheme"]
    assert set(init_params("dog")) == {"init.scheme", *applicable_keys("dog")}
    # no registered scheme (a sweep's parent run): every key stays
    assert run_params({"init": {"on_ratio": 0.5}, "seed": 1}) == {"init.on_ratio": 0.5, "seed": 1}


def test_report_arms_follow_the_registry(plugin_scheme):
    trials = pd.DataFrame([
        {"init.scheme": "default", "init.fraction": 1.0, "init.on_ratio": 0.5},
        {"init.scheme": plugin_scheme, "init.fraction": 0.5, "init.on_ratio": 0.1},
        {"init.scheme": "dog", "init.fraction": 1.0, "init.on_ratio": 0.25},
        {"init.scheme": "dog", "init.fraction": 1.0, "init.on_ratio": 0.75},
        {"init.scheme": "kaiming", "init.fraction": 1.0, "init.on_ratio": 0.9},
    ])
    # on_ratio is no part of the plug-in's arm (it does not read it); fraction is
    assert arm_order(assign_arms(trials)) == [
        "dog fraction=1 on_ratio=0.25", "dog fraction=1 on_ratio=0.75", f"{plugin_scheme} fraction=0.5",
        "kaiming fraction=1", "default"]
    assert report_rank("some-unknown-scheme") < report_rank("kaiming")
