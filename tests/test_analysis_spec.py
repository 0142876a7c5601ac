"""The ``analysis:`` section of a sweep spec: parsing, one-line errors, and the power table of --dry-run."""

import copy
from pathlib import Path

import pytest
import yaml

from echos_core.cli import main
from echos_core.config import ConfigError
from echos_core.report.design import min_detectable_difference, seeds_needed
from echos_core.sweep.analysis_spec import analysis_from_dict
from echos_core.sweep.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
DOG = {"init.scheme": "dog", "init.on_ratio": 0.5}
ON = {"init.scheme": "dog", "init.on_ratio": 1.0}
SPEC = {
    "name": "design",
    "base": {"model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
             "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
             "train": {"epochs": 2, "batch_size": 16, "device": "cpu"}},
    "space": {"init": {"type": "grid", "values": [{"init.scheme": "kaiming"}, DOG, ON]}},
    "search": "grid",
    "seeds": [0, 1, 2, 3, 4, 5],
    "analysis": {"primary": {"contrast": [ON, DOG], "model": "paired"},
                 "secondary": [{"contrast": [DOG, {"init.scheme": "kaiming"}], "model": "paired"},
                               {"trend": "init.on_ratio"}],
                 "pool": {"init.scheme": "dog"}, "alpha": 0.05, "margin": 0.5, "target_difference": 2.0,
                 "pilot_sd": 1.5},
}


def _spec(**changes):
    d = copy.deepcopy(SPEC)
    for k, v in changes.items():
        if v is None:
            d["analysis"].pop(k)
        else:
            d["analysis"][k] = v
    return d


def test_parsed_section_and_round_trip():
    spec = parse_spec(_spec())
    an = spec.analysis
    assert an.primary.arm == ON and an.primary.versus == DOG and an.primary.model == "paired"
    assert [c.is_trend for c in an.secondary] == [False, True]
    assert (an.alpha, an.margin, an.target_difference, an.pilot_sd, an.metric) == (0.05, 0.5, 2.0, 1.5, "val_top1")
    assert analysis_from_dict(an.to_dict()) == an
    assert parse_spec({k: v for k, v in SPEC.items() if k != "analysis"}).analysis is None


@pytest.mark.parametrize("changes, needle", [
    ({"bogus": 1}, "analysis.bogus=1: unknown key"),
    ({"primary": None}, "analysis.primary=None: is required"),
    ({"margin": None}, "analysis.margin=None: is required"),
    ({"margin": -1}, "analysis.margin=-1: must be > 0"),
    ({"alpha": 0.7}, "analysis.alpha=0.7: must be < 0.5"),
    ({"pilot_sd": "big"}, "analysis.pilot_sd='big': must be a number > 0"),
    ({"pilot_sd": {"sweep": ""}}, "analysis.pilot_sd.sweep='': must name an earlier sweep"),
    ({"metric": "val_top9"}, "analysis.metric='val_top9': must be one of"),
    ({"primary": {"contrast": [ON]}}, "analysis.primary.contrast=[{"),
    ({"primary": {"contrast": [ON, ON]}}, "names the same arm twice"),
    ({"primary": {"contrast": [ON, {"init.scheme": "dog", "init.on_ratio": 0.25}]}},
     "analysis.primary.contrast[1]={'init.scheme': 'dog', 'init.on_ratio': 0.25}: no configuration of this sweep"),
    ({"primary": {"contrast": [ON, {"train.lr": 0.5}]}}, "train.lr is not searched and stays"),
    ({"primary": {"contrast": [ON, {"init.scheme": "kaiming"}]}}, "is outside analysis.pool"),
    ({"primary": {"contrast": [ON, DOG], "model": "anova"}}, "analysis.primary.model='anova': must be one of pooled"),
    ({"primary": {"trend": "train.lr"}}, "analysis.primary.trend='train.lr': must be a config key the space varies"),
    ({"primary": {"contrast": [ON, DOG], "trend": "init.on_ratio"}}, "exactly one of `contrast` or `trend`"),
    ({"secondary": [{"contrast": [ON, DOG], "model": "paired"}]}, "analysis.secondary[0]="),
    ({"pool": {"init.scheme": "random-field"}}, "analysis.pool={'init.scheme': 'random-field'}: no configuration"),
])
def test_bad_analysis_is_one_line(changes, needle):
    with pytest.raises(ConfigError) as e:
        parse_spec(_spec(**changes))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_dry_run_prints_the_power_table_and_flags_underpowered(tmp_path, capsys):
    p = tmp_path / "design.yaml"
    p.write_text(yaml.safe_dump(_spec()))
    assert main(["sweep", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "primary: dog on_ratio=1 - dog on_ratio=0.5 (paired t-test)" in out
    assert "secondary (2, Holm-adjusted" in out and "equivalence margin ±0.5 points" in out
    mdd6 = min_detectable_difference(1.5, 6)
    row = next(line for line in out.splitlines() if line.rstrip().endswith("<- this spec"))
    assert row.split()[:2] == ["6", f"{mdd6:.2f}"]
    need = seeds_needed(1.5, 2.0)
    assert f"target difference 2 points: {need} paired seeds" in out
    assert mdd6 > 2.0 and "UNDERPOWERED: the primary comparison detects" in out


def test_pooled_primary_uses_the_arms_in_the_pool_and_a_powered_design_says_so(tmp_path, capsys):
    d = _spec(primary={"contrast": [ON, DOG]}, target_difference=4.0)
    p = tmp_path / "design.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pooled, 2 arms" not in out  # two arms in the pool: the pooled model is the paired t-test
    assert "powered: the primary comparison detects" in out


def test_pilot_sd_from_a_sweep_that_is_not_in_the_store_is_one_line(tmp_path, capsys):
    p = tmp_path / "design.yaml"
    p.write_text(yaml.safe_dump(_spec(pilot_sd={"sweep": "nope", "tracking_uri": f"sqlite:///{tmp_path}/x.db"})))
    assert main(["sweep", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analysis.pilot_sd.sweep='nope': cannot be read" in err[0]


def test_onoff_ratio_dry_run_power_table(capsys):
    assert main(["sweep", str(REPO / "sweeps" / "onoff_ratio.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "primary: dog on_ratio=1 - dog on_ratio=0.5 (pooled arm + seed model)" in out
    row = next(line for line in out.splitlines() if line.rstrip().endswith("<- this spec"))
    assert row.split()[:2] == ["4", f"{min_detectable_difference(1.9, 4):.2f}"]
    assert "UNDERPOWERED" in out


def test_resume_ignores_the_analysis_section_but_not_what_runs():
    import json

    from echos_core.sweep.runner import _check_same_spec
    from echos_core.sweep.spec import SpecError

    without = parse_spec({k: v for k, v in SPEC.items() if k != "analysis"})
    saved = {"spec": json.loads(json.dumps(without.summary_dict(), default=str))}
    _check_same_spec(parse_spec(_spec()), saved, "sqlite:///x.db")  # analysis added after the start: fine
    changed = copy.deepcopy(SPEC)
    changed["seeds"] = [0, 1]
    with pytest.raises(SpecError, match="--resume seeds"):
        _check_same_spec(parse_spec(changed), saved, "sqlite:///x.db")
