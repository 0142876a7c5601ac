"""MlflowRun against a real SQLite store in tmp_path, read back with MlflowClient."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from echos_core.config import config_from_dict, config_to_dict
from echos_core.tracking import DEFAULT_TRACKING_URI, MlflowRun, find_runs, resolve_tracking_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_params_metrics_tags_artifact_roundtrip(store, tmp_path, cfg_dict):
    cfg = config_to_dict(config_from_dict(cfg_dict))
    art = tmp_path / "config.yaml"
    art.write_text("seed: 0\n")
    with MlflowRun(store, "exp-a", "run-a", cfg, {"echos.sweep": "s1", "echos.trial_id": "t0"}) as run:
        for epoch in (1, 2, 3):
            run.log_epoch({"epoch": epoch, "val_top1": 0.1 * epoch, "val/loss": 2.0 - epoch * 0.1,
                           "note": "not a number", "skipped": None})
        run.log_artifact(art)
        run.set_tags({"echos.status": "finished"})
        run_id = run.run_id

    client = MlflowClient(tracking_uri=store)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "run-a"
    p = r.data.params
    assert p["init.scheme"] == "dog" and p["model.kernel_size"] == "5" and p["seed"] == "0"
    assert p["model.name"] == "convmixer" and p["init.on_ratio"] == "0.5"
    assert p["model.drop_path"] == "0.0" and p["data.root"] == "null" and p["train.compile"] == "false"
    hist = client.get_metric_history(run_id, "val_top1")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2, 3]
    assert "note" not in r.data.metrics and "skipped" not in r.data.metrics
    assert "epoch" not in r.data.metrics  # the epoch is the step only (else Compare's plots default to it)
    assert r.data.tags["echos.sweep"] == "s1" and r.data.tags["echos.status"] == "finished"
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    db_dir = store[len("sqlite:///"):].rsplit("/", 1)[0]
    assert (Path(db_dir) / "mlartifacts" / "exp-a" / run_id / "artifacts" / "config.yaml").is_file()


def test_nested_run_reattach_and_find(store, cfg_dict):
    with MlflowRun(store, "exp-b", "parent", {}, {"echos.role": "sweep"}) as parent:
        pass
    run = MlflowRun(store, "exp-b", "child", cfg_dict, {"echos.trial_id": "abc_00001"},
                    parent_run_id=parent.run_id)
    run.log_epoch({"epoch": 1, "val_top1": 0.5})
    assert run.logged_steps() == {1}
    # A resumed trial attaches to the same run: params are not re-logged, status goes RUNNING.
    again = MlflowRun(store, "exp-b", "child", cfg_dict, {"echos.attempt": "2"}, run_id=run.run_id)
    assert again.run_id == run.run_id
    again.log_epoch({"epoch": 2, "val_top1": 0.6})
    again.end("KILLED")

    found = find_runs(store, "exp-b", {"echos.trial_id": "abc_00001"})
    assert [f.info.run_id for f in found] == [run.run_id]
    child = found[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.tags["echos.attempt"] == "2"
    assert child.info.status == "KILLED"
    assert find_runs(store, "exp-b", {"echos.trial_id": "nope"}) == []
    assert find_runs(store, "no-such-experiment", {"echos.trial_id": "x"}) == []


def test_failed_run_is_marked_failed(store):
    with pytest.raises(RuntimeError):
        with MlflowRun(store, "exp-c", "boom", {"a": {"b": 1}}) as run:
            raise RuntimeError("trainer blew up")
    assert MlflowClient(tracking_uri=store).get_run(run.run_id).info.status == "FAILED"


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")  # the environment's default comes next
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/from-env.db"
    assert resolve_tracking_uri("sqlite:///given.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/given.db"
    assert resolve_tracking_uri(DEFAULT_TRACKING_URI, tmp_path).startswith("sqlite:////")
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.mark.parametrize("last,errored,expected", [
    ({"epoch": 1, "max_epochs": 3}, False, ("stopped", "true", "FINISHED")),   # ASHA ended it early: no failure
    ({"epoch": 3, "max_epochs": 3}, False, ("finished", "false", "FINISHED")),
    ({"epoch": 2, "max_epochs": 3}, True, ("error", "false", "FAILED")),
])
def test_trial_end_is_marked_from_the_driver(store, last, errored, expected):
    from echos_core.sweep.status import MlflowTrialStatus

    sweep_id = f"s-{expected[0]}"
    run = MlflowRun(store, "exp-d", "trial", {}, {"echos.sweep_id": sweep_id, "echos.trial_id": "t1",
                                                   "echos.status": "running", "echos.asha_stopped": "false"})
    marker = MlflowTrialStatus(store, "exp-d", sweep_id)
    # The run id comes with the trial's last result, or is found by the sweep and trial id tags.
    result = dict(last, mlflow_run_id=run.run_id) if errored else dict(last)
    assert marker.mark("t1", result, errored) == expected[0]
    r = MlflowClient(tracking_uri=store).get_run(run.run_id)
    assert (r.data.tags["echos.status"], r.data.tags["echos.asha_stopped"], r.info.status) == expected
    assert r.data.tags["echos.last_epoch"] == str(last["epoch"])
    note = r.data.tags.get("mlflow.note.content", "")  # the run's description in the UI
    assert ("Stopped early by the scheduler (ASHA) after epoch 1 of 3" in note) == (expected[0] == "stopped")
    assert marker.mark("no-such-trial", {}, False) is None


@pytest.mark.parametrize("held,expected", [(2, ("stopped", "true", "2")), (3, ("finished", "false", "3"))])
def test_a_trial_that_ran_past_the_schedulers_stop_is_marked_by_what_its_run_holds(store, held, expected):
    """A data-parallel trial's workers run ahead of Tune (Ray Train's reports pass through queues): ASHA
    stops it on epoch 1's result while its run already holds epoch ``held``; the tags say what the run holds."""
    from echos_core.sweep.status import MlflowTrialStatus

    run = MlflowRun(store, "exp-a", "trial", {}, {"echos.sweep_id": "s-a", "echos.trial_id": f"t{held}"})
    for epoch in range(1, held + 1):
        run.log_epoch({"epoch": epoch, "val_loss": 1.0 / epoch})
    marker = MlflowTrialStatus(store, "exp-a", "s-a")
    assert marker.mark(f"t{held}", {"epoch": 1, "max_epochs": 3, "mlflow_run_id": run.run_id}, False) == expected[0]
    tags = MlflowClient(tracking_uri=store).get_run(run.run_id).data.tags
    assert (tags["echos.status"], tags["echos.asha_stopped"], tags["echos.last_epoch"]) == expected
    if held < 3:
        assert "after epoch 2 of 3 (decided on epoch 1's result" in tags["mlflow.note.content"]


def test_each_trial_keeps_its_own_end_time(store):
    """Marking every trial again when the sweep ends must not move their end times to the sweep's end."""
    import time

    from echos_core.sweep.status import MlflowTrialStatus

    client = MlflowClient(tracking_uri=store)
    done = MlflowRun(store, "exp-t", "done", {}, {"echos.sweep_id": "s-t", "echos.trial_id": "t-done"})
    done.end("FINISHED")  # the trial ended it itself
    stopped = MlflowRun(store, "exp-t", "stopped", {}, {"echos.sweep_id": "s-t", "echos.trial_id": "t-stop"})
    marker = MlflowTrialStatus(store, "exp-t", "s-t")
    marker.mark("t-stop", {"epoch": 1, "max_epochs": 3, "mlflow_run_id": stopped.run_id}, False)  # ASHA: at its stop
    marker.mark("t-done", {"epoch": 3, "max_epochs": 3, "mlflow_run_id": done.run_id}, False)
    ends = {r: client.get_run(r).info.end_time for r in (done.run_id, stopped.run_id)}
    assert all(ends.values())
    time.sleep(1.1)
    for tid, run in (("t-stop", stopped), ("t-done", done)):  # what the driver does when the sweep ends
        marker.mark(tid, {"epoch": 1 if tid == "t-stop" else 3, "max_epochs": 3, "mlflow_run_id": run.run_id}, False)
    assert {r: client.get_run(r).info.end_time for r in ends} == ends


def test_runs_of_trials_ray_lost_are_dropped(store):
    from mlflow.entities import ViewType

    from echos_core.sweep.status import MlflowTrialStatus

    kept = MlflowRun(store, "exp-e", "a", {}, {"echos.sweep_id": "s-9", "echos.trial_id": "kept"})
    lost = MlflowRun(store, "exp-e", "b", {}, {"echos.sweep_id": "s-9", "echos.trial_id": "lost"})
    other = MlflowRun(store, "exp-e", "c", {}, {"echos.sweep_id": "s-8", "echos.trial_id": "other"})
    parent = MlflowRun(store, "exp-e", "p", {}, {"echos.sweep_id": "s-9", "echos.role": "sweep"})
    assert MlflowTrialStatus(store, "exp-e", "s-9").drop_orphans({"kept"}) == [lost.run_id]
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("exp-e").experiment_id
    active = {r.info.run_id for r in client.search_runs([exp])}
    assert active == {kept.run_id, other.run_id, parent.run_id}
    (gone,) = client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
    assert gone.info.run_id == lost.run_id and gone.data.tags["echos.status"] == "orphaned"
    assert gone.info.status == "KILLED"


def test_tag_names_are_the_documented_ones():
    """The tag names are a public contract (MLflow searches, the UI, sweeps/README.md)."""
    from echos_core import tracking

    assert (tracking.TAG_SWEEP, tracking.TAG_SWEEP_ID, tracking.TAG_TRIAL_ID, tracking.TAG_STATUS) == (
        "echos.sweep", "echos.sweep_id", "echos.trial_id", "echos.status")
    assert tracking.best_metric_tag("val_top1") == "echos.best_val_top1"
    assert tracking.environment_tags({"torch_version": "2", "git_revision": None}) == {"echos.torch_version": "2"}


def test_params_leave_out_where_a_run_goes(cfg_dict):
    """mlflow.*, output_dir and run_name say where a run is written, not what it trains: no columns for them."""
    from echos_core.tracking import run_params

    cfg = config_to_dict(config_from_dict({**cfg_dict, "run_name": "x", "mlflow": {"experiment": "e"}}))
    params = run_params(cfg)
    assert not [k for k in params if k.startswith("mlflow.") or k in ("output_dir", "run_name")]
    assert params["seed"] == cfg["seed"] and params["model.name"] == cfg["model"]["name"]
    kaiming = run_params(config_to_dict(config_from_dict({**cfg_dict, "init": {"scheme": "kaiming"}})))
    assert "init.on_ratio" not in kaiming and "init.gamma_low" not in kaiming and "init.scale" not in kaiming
