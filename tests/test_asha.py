"""ASHA with ``scheduler.full_budget: points_to_evaluate``: the given configurations run to max_t, with
every seed, while ASHA stops sampled configurations that fall behind them (echos_core.sweep.asha)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml
from ray.tune.schedulers import TrialScheduler

from echos_core.sweep.asha import FullBudgetASHA
from echos_core.sweep.runner import _scheduler, _search_alg
from echos_core.sweep.spec import parse_spec

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
GIVEN = {"init": "dog", "train.lr": 0.003}


def _asha() -> FullBudgetASHA:
    return FullBudgetASHA([GIVEN], time_attr="epoch", metric="val_top1", mode="max", max_t=4, grace_period=1,
                          reduction_factor=2)


def _trial(sched, name: str, **config):
    t = SimpleNamespace(trial_id=name, config=config)
    sched.on_trial_add(None, t)
    return t


def test_given_configuration_runs_on_where_asha_stops_a_sampled_one():
    sched = _asha()
    strong = [_trial(sched, f"s{i}", init="kaiming", **{"train.lr": 0.005}, seed=i) for i in range(3)]
    for t in strong:
        assert sched.on_trial_result(None, t, {"epoch": 1, "val_top1": 60.0}) == TrialScheduler.CONTINUE
    weak_sampled = _trial(sched, "w", init="default", **{"train.lr": 0.002}, seed=0)
    weak_given = _trial(sched, "g", **GIVEN, seed=1, __trial_index__=1)
    assert sched.on_trial_result(None, weak_sampled, {"epoch": 1, "val_top1": 10.0}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, weak_given, {"epoch": 1, "val_top1": 10.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, weak_given, {"epoch": 2, "val_top1": 11.0}) == TrialScheduler.CONTINUE
    # at max_t it ends like every trial; only the sampled trial was counted as stopped early
    assert sched.on_trial_result(None, weak_given, {"epoch": 4, "val_top1": 12.0}) == TrialScheduler.STOP
    assert sched._num_stopped == 2


def test_spares_matches_every_given_value_and_ignores_seed():
    sched = _asha()
    assert sched.spares({**GIVEN, "seed": 7})
    assert not sched.spares({"init": "dog", "train.lr": 0.0031})
    assert not sched.spares({"init": "dog"})
    assert not sched.spares(None)


def test_demo_spec_gives_its_comparison_first_with_every_seed_and_spares_it():
    spec = parse_spec(yaml.safe_load((SWEEPS / "demo.yaml").read_text()), SWEEPS)
    given = spec.search.points_to_evaluate
    assert {p["init"] for p in given} == {"dog", "kaiming", "default"}
    assert len({p["train.lr"] for p in given}) == 1  # paired: only the init differs
    assert spec.scheduler.type == "asha" and spec.search.algorithm == "optuna" and spec.num_samples > len(given)
    sched = _scheduler(spec)
    assert isinstance(sched, FullBudgetASHA) and all(sched.spares(p) for p in given)
    searcher = _search_alg(spec, max_concurrent=len(given) * len(spec.seeds))
    suggested = [searcher.suggest(f"t{i}") for i in range(len(given) * len(spec.seeds))]
    firsts = [{k: v for k, v in s.items() if not k.startswith("__")} for s in suggested]
    assert firsts == [p for p in given for _ in spec.seeds]  # each given point once per seed, in order
    assert [s["__trial_index__"] for s in suggested] == list(range(len(spec.seeds))) * len(given)
