"""Faults, end to end: what a sweep does when its trials fail, its driver is interrupted or killed, or
two drivers race.  Slow (Ray starts for real) except the lock test.

* a diverging trial: exit status 1, the failed trial named, the parent run FAILED;
* SIGINT of the driver: exit status 130, an "interrupted" line with the resume command, trials and
  parent marked interrupted (KILLED), never FINISHED; ``--resume`` then completes every epoch once;
* SIGKILL of the driver: its local Ray instance does not outlive it; ``--resume`` continues each trial
  from its newest checkpoint on storage (no epoch trained twice), every epoch once in MLflow;
* the same spec launched twice at once: two sweep ids, no run deleted, no trial lost;
* a second driver of the same sweep on the same storage is refused with one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from test_sweep_e2e import ECHOS, _echos, _runs, _start, _stop, _tiny_spec, _wait_for, _write

from echos_core.cli import main


def _logged_epochs(db: Path) -> dict[str, int]:
    """{trial run id: epochs logged} read straight from the SQLite store (read-only, never blocking)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("select run_uuid, count(distinct step) from metrics where key = 'val_top1' "
                               "group by run_uuid").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


def _all_runs(uri: str, experiment: str) -> list:
    from echos_core.tracking import mlflow_client

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp is not None else []


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    todo, out = [pid], set()
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.add(p)
        except OSError:
            pass
    return alive


def _grid(name: str, epochs: int, lrs: list, **kw) -> dict:
    spec = _tiny_spec(name, space={"train.lr": {"type": "grid", "values": lrs}}, search="grid", scheduler="none",
                      seeds=[0], **kw)
    spec["base"]["train"]["epochs"] = epochs
    return spec


@pytest.mark.slow
def test_diverging_trial_exits_1_and_names_it(tmp_path):
    spec = _grid("diverge", 2, [0.003, 1.0e12], ray={"storage_path": "ray_results", "max_failures": 0})
    spec["base"]["train"]["grad_clip"] = None
    res = _echos(["sweep", _write(tmp_path, spec)], cwd=tmp_path)
    assert res.returncode == 1, res.stdout[-4000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("echos: error: ")]
    assert len(line) == 1 and "1 of 2 trials failed" in line[0] and "diverged" in line[0].lower(), line
    client, parents, trials = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "diverge")
    assert parents[0].info.status == "FAILED" and parents[0].data.tags["echos.n_errors"] == "1"
    assert sorted(t.info.status for t in trials) == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_sigint_marks_interrupted_and_resume_completes(tmp_path):
    spec = _grid("intr", 12, [0.003, 0.01], max_concurrent=1)
    spec["base"]["data"].update(image_size=32, fake_size=1024)  # epochs of ~0.3 s: the signal lands mid-sweep
    spec["base"]["train"]["steps_per_epoch"] = None
    path = _write(tmp_path, spec)
    db = tmp_path / "mlflow.db"
    log = tmp_path / "first.log"
    driver = _start(ECHOS + ["sweep", path], tmp_path, log)
    try:
        _wait_for(lambda: any(n >= 2 for n in _logged_epochs(db).values()), 300, "two logged epochs", driver, log)
        os.kill(driver.pid, signal.SIGINT)  # the driver only, as a Ctrl-C aimed at it
        driver.wait(timeout=120)
    finally:
        _stop(driver, signal.SIGKILL)
    out = log.read_text()
    assert driver.returncode == 130, out[-4000:]
    assert "interrupted (SIGINT)" in out and "--resume" in out and "\nbest trial " not in out
    client, parents, trials = _runs(f"sqlite:///{db}", "intr")
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["echos.status"] == "interrupted"
    assert trials and all(t.info.status != "FINISHED" or t.data.tags["echos.status"] == "finished" for t in trials)
    cut = [t for t in trials if t.data.tags["echos.status"] != "finished"]
    assert cut and all(t.info.status == "KILLED" and t.data.tags["echos.status"] == "interrupted"
                       and t.data.tags["echos.asha_stopped"] == "false" for t in cut)

    res = _echos(["sweep", path, "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    client, parents, trials = _runs(f"sqlite:///{db}", "intr")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 2
    for t in trials:
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "val_top1")]
        assert steps == list(range(1, 13)), steps  # every epoch exactly once
        assert t.info.status == "FINISHED" and t.data.tags["echos.status"] == "finished"


def _checkpoint_epochs(storage: Path) -> dict[str, int]:
    """{trial folder: newest epoch checkpointed on storage}."""
    out: dict[str, int] = {}
    for f in storage.glob("*/trial_*/checkpoint_*/echos_trial.json"):
        try:
            epoch = json.loads(f.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            continue
        out[f.parents[1].name] = max(out.get(f.parents[1].name, 0), epoch)
    return out


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_newest_checkpoint(tmp_path):
    epochs = 12  # of ~0.5 s each (2048 images): the kill lands long before the end even on a fast machine
    spec = _grid("killed", epochs, [0.003], ray={"storage_path": "ray_results", "keep_checkpoints": 3})
    spec["base"]["data"].update(image_size=32, fake_size=2048)
    spec["base"]["train"]["steps_per_epoch"] = None
    path = _write(tmp_path, spec)
    storage = tmp_path / "ray_results"
    log = tmp_path / "first.log"
    driver = _start(ECHOS + ["sweep", path], tmp_path, log)
    try:
        _wait_for(lambda: max(_checkpoint_epochs(storage).values(), default=0) >= 2, 300, "an epoch-2 checkpoint",
                  driver, log)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        tree = _descendants(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        t0 = time.time()
        while _alive(tree) and time.time() - t0 < 40:
            time.sleep(1)
        left = _alive(tree)
    finally:
        _stop(driver, signal.SIGKILL)
    assert not left, f"{len(left)} processes of the killed driver's Ray instance still alive after 40 s"
    newest = _checkpoint_epochs(storage)
    (trial,) = newest
    # the watchdog ended the runs the killed driver left RUNNING: interrupted, KILLED (not running for ever)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _wait_for(lambda: all(r.info.status != "RUNNING" for r in _all_runs(uri, "killed")), 60,
              "the killed driver's runs to be ended")
    lost = _all_runs(uri, "killed")
    assert len(lost) == 2 and {(r.info.status, r.data.tags["echos.status"]) for r in lost} == {("KILLED", "interrupted")}

    res = _echos(["sweep", path, "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    reported = [json.loads(ln)["epoch"] for ln in next(storage.glob(f"*/{trial}/result.json")).read_text().splitlines()]
    after = reported[reported.index(newest[trial] + 1):]
    assert after == list(range(newest[trial] + 1, epochs + 1)), reported  # continued from its newest checkpoint
    assert reported == sorted(set(reported)), reported  # no epoch trained twice
    client, parents, trials = _runs(uri, "killed")
    assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "val_top1")] == list(range(1, epochs + 1))
    assert trials[0].info.status == "FINISHED" and trials[0].data.tags["echos.status"] == "finished"  # reopened
    assert parents[-1].info.status == "FINISHED"


@pytest.mark.slow
def test_two_launches_at_once_keep_apart(tmp_path):
    path = _write(tmp_path, _grid("twice", 2, [0.003, 0.01]))
    procs = [_start(ECHOS + ["sweep", path], tmp_path, tmp_path / f"d{i}.log") for i in range(2)]
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            _stop(p, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], (tmp_path / "d1.log").read_text()[-3000:]
    ids = {ln.split()[2].rstrip(":") for i in range(2) for ln in (tmp_path / f"d{i}.log").read_text().splitlines()
           if ln.startswith("starting sweep ")}
    assert len(ids) == 2, ids
    from mlflow.entities import ViewType

    client, parents, trials = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "twice")
    assert len(parents) == 2 and len(trials) == 4
    exp = client.get_experiment_by_name("twice").experiment_id
    assert client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY) == []
    assert all(t.info.status == "FINISHED" for t in trials)


def test_second_driver_of_one_sweep_is_refused(tmp_path, monkeypatch, capsys):
    """A resume while another driver holds the sweep: one line, exit 2, before Ray."""
    from echos_core.sweep.runner import SWEEP_FILE
    from echos_core.sweep.spec import load_spec
    from echos_core.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, _grid("locked", 2, [0.003]))
    spec = load_spec(path)
    folder = tmp_path / "ray_results" / "locked-20250101-000000"
    folder.mkdir(parents=True)
    (folder / SWEEP_FILE).write_text(json.dumps({"sweep_id": folder.name, "spec": spec.summary_dict(),
                                                 "tracking_uri": resolve_tracking_uri(None)}, default=str))
    with open(folder / ".echos-driver.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere")
        held.flush()
        rc = main(["sweep", str(path), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "another driver (pid 1 on elsewhere)" in err, err
    import sys

    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_retried_trial_reattaches_cleanly(tmp_path):
    """A trial run that failed (say, in a tracking outage) and is retried: the stale error tag goes, and the
    artifacts its run lacks are named for re-logging."""
    from echos_core.sweep.trainable import _reattach
    from echos_core.tracking import TAG_ERROR, MlflowRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowRun(uri, "retry", "trial", {"seed": 0}, {TAG_ERROR: "MlflowException: connection refused"})
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    first.log_artifact(tmp_path / "config.yaml")
    first.end("FAILED")
    again = MlflowRun(uri, "retry", "trial", {"seed": 0}, {}, run_id=first.run_id)
    assert _reattach(again, first.run_id) == {"init_report.json", "environment.json"}
    assert TAG_ERROR not in again.client.get_run(first.run_id).data.tags
    fresh = MlflowRun(uri, "retry", "other", {"seed": 1}, {})
    assert _reattach(fresh, None) == {"config.yaml", "init_report.json", "environment.json"}


def test_watchdog_ends_only_the_lost_sweeps_running_runs(tmp_path):
    from echos_core.sweep.watchdog import end_lost_runs
    from echos_core.tracking import mlflow_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    exp = client.create_experiment("lost")
    running = client.create_run(exp, tags={"echos.sweep_id": "s-1"}).info.run_id
    done = client.create_run(exp, tags={"echos.sweep_id": "s-1"}).info.run_id
    client.set_terminated(done, "FINISHED")
    other = client.create_run(exp, tags={"echos.sweep_id": "s-2"}).info.run_id
    assert end_lost_runs(uri, "lost", "s-1") == 1
    assert (client.get_run(running).info.status, client.get_run(running).data.tags["echos.status"]) == \
        ("KILLED", "interrupted")
    assert client.get_run(done).info.status == "FINISHED" and "echos.status" not in client.get_run(done).data.tags
    assert client.get_run(other).info.status == "RUNNING"
    assert end_lost_runs(uri, "lost", "s-1") == 0


def _mlflow_server(root: Path, port: int, log: Path):
    import subprocess
    import sys

    from test_sweep_e2e import ENV

    f = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            cwd=root, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_tracking_outage_longer_than_the_retries_loses_nothing(tmp_path):
    """The tracking server stops mid-sweep for longer than MLflow's HTTP retries, then comes back: trials
    fail, Ray retries them from their checkpoints, and at the end every epoch is logged exactly once, every
    artifact is there, one run per trial, no stale error tag."""
    import subprocess

    from test_sweep_e2e import ENV, _free_port

    from echos_core.tracking import mlflow_client

    port, server_log = _free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port, server_log)
    driver = None
    try:
        _wait_for(lambda: _healthy(url), 180, "mlflow server /health", server, server_log)
        spec = _grid("outage", 10, [0.003, 0.001], ray={"storage_path": "ray_results", "max_failures": 10,
                                                         "keep_checkpoints": 2})
        spec["base"]["model"].update(dim=32, depth=2)
        spec["base"]["data"].update(image_size=32, fake_size=512)
        spec["base"]["train"].update(batch_size=32, steps_per_epoch=12)  # epochs of about a second
        spec["mlflow"] = {"tracking_uri": url}
        log = tmp_path / "driver.log"
        # MLflow's client gives up after about 3 s of refused connections (default: minutes of retries)
        env = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
        driver = subprocess.Popen([str(c) for c in ECHOS + ["sweep", _write(tmp_path, spec)]], cwd=tmp_path, env=env,
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        client = mlflow_client(url)

        def an_epoch_2():
            exp = client.get_experiment_by_name("outage")
            runs = client.search_runs([exp.experiment_id]) if exp is not None else []
            return any(len(client.get_metric_history(r.info.run_id, "val_top1")) >= 2 for r in runs)

        _wait_for(an_epoch_2, 300, "a trial's second epoch on the server", driver, log)
        _stop(server)  # the outage: well past the client's retries
        time.sleep(20)
        server = _mlflow_server(tmp_path, port, server_log)
        _wait_for(lambda: _healthy(url), 180, "mlflow server /health again", server, server_log)
        driver.wait(timeout=420)
        out = log.read_text(errors="replace")
        assert driver.returncode == 0, out[-4000:]
        assert list(tmp_path.glob("ray_results/*/trial_*/error.txt")), "the outage hit no trial"  # it did fail them

        _, parents, trials = _runs(url, "outage")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(trials) == 2 and len({t.data.tags["echos.trial_id"] for t in trials}) == 2  # no duplicate run
        for t in trials:
            assert t.info.status == "FINISHED" and "echos.error" not in t.data.tags, t.data.tags
            assert [m.step for m in client.get_metric_history(t.info.run_id, "val_top1")] == list(range(1, 11))
            arts = {a.path for a in client.list_artifacts(t.info.run_id)}
            assert {"config.yaml", "init_report.json", "environment.json"} <= arts, arts
    finally:
        if driver is not None and driver.poll() is None:
            _stop(driver, signal.SIGKILL)
        _stop(server)


def test_resume_waits_for_a_killed_drivers_watchdog_but_not_for_a_live_driver(tmp_path):
    """The lock of a dead driver (held on by its watchdog) is waited for; a live driver's is refused at once."""
    import subprocess
    import threading

    from echos_core.sweep.runner import _driver_lock
    from echos_core.sweep.spec import SpecError

    folder = tmp_path / "s-1"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    for holder, waits in ((f"pid {dead.pid} on {__import__('socket').gethostname()}", True),
                          ("the watchdog (pid 1) of driver pid 2, which was killed", True),
                          (f"pid {os.getpid()} on {__import__('socket').gethostname()}", False)):
        held = open(folder / ".echos-driver.lock", "a+")
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write(holder)
        held.flush()
        timer = threading.Timer(1.5, held.close)  # the holder lets go after 1.5 s
        timer.start()
        t0 = time.monotonic()
        try:
            with _driver_lock(str(tmp_path), "s-1"):
                got = True
        except SpecError as e:
            got = False
            assert "another driver" in str(e)
        waited = time.monotonic() - t0
        timer.join()
        held.close()
        assert got == waits, holder
        assert (waited >= 1.4) == waits, (holder, waited)


def test_a_trial_resumed_from_its_last_checkpoint_reports_its_last_epoch_again(tmp_path, monkeypatch):
    """The driver died after a trial's last checkpoint reached storage but before Ray's next experiment
    snapshot: Tune resumes the trial with an older checkpoint, or none.  The trial finds its newest one on
    storage, has nothing left to train, and reports its last epoch (with that checkpoint) once more, so
    that Tune's last result of it is the last epoch, not an earlier one that reads as stopped early.  When
    Ray knew that last checkpoint, its last result is the last epoch already: nothing is reported again."""
    import ray
    from ray import tune

    from echos_core.sweep.spec import parse_spec
    from echos_core.sweep.trainable import TRIAL_STATE_FILE, TrialContext, run_trial, trial_dirname

    spec = parse_spec(_grid("resumed", 2, [0.003]), tmp_path)
    storage, sweep_id, trial_id = tmp_path / "ray_results", "resumed-1", "abc_00000"
    ctx = TrialContext(spec=spec, sweep_id=sweep_id, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       storage=str(storage))
    trial_dir = storage / sweep_id / trial_dirname(trial_id)
    reports, given = [], []

    class Session:  # Ray Tune's per-trial session, as the trainable uses it
        def get_trial_id(self):
            return trial_id

        def get_trial_name(self):
            return f"resumed_{trial_id}"

        def get_trial_dir(self):
            return str(trial_dir)

    def report(metrics, checkpoint=None):  # Tune persists a reported checkpoint to the trial's folder
        saved = None
        if checkpoint is not None:
            saved = trial_dir / f"checkpoint_{len(list(trial_dir.glob('checkpoint_*'))):06d}"
            shutil.copytree(checkpoint.path, saved)
        reports.append((metrics["epoch"], saved))

    monkeypatch.setattr(tune, "get_context", lambda: Session())
    monkeypatch.setattr(tune, "get_checkpoint", lambda: given[-1] if given else None)
    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Node", (), {"get_node_id": lambda self: "n0"})())
    config = {"train.lr": 0.003, "seed": 0}

    run_trial(config, ctx)  # trains both epochs, checkpoints both
    assert [e for e, _ in reports] == [1, 2]
    # Ray's snapshot knew only the epoch-1 checkpoint (or none): the trial trains nothing, reports epoch 2 again
    for older in (tune.Checkpoint.from_directory(str(reports[0][1])), None):
        given[:] = [older] if older is not None else []
        del reports[:]
        run_trial(config, ctx)
        assert [e for e, _ in reports] == [2], "a resumed trial with nothing left to train reports its last epoch"
        assert json.loads((reports[0][1] / TRIAL_STATE_FILE).read_text())["epoch"] == 2  # and its checkpoint
    # Ray knew the last checkpoint, so its last result is the last epoch too: nothing is reported twice
    given[:] = [tune.Checkpoint.from_directory(str(reports[0][1]))]
    del reports[:]
    run_trial(config, ctx)
    assert reports == []

    client, _, (trial_run,) = _runs(ctx.tracking_uri, spec.experiment)
    assert [m.step for m in client.get_metric_history(trial_run.info.run_id, "val_top1")] == [1, 2]
    assert trial_run.info.status == "FINISHED" and trial_run.data.tags["echos.status"] == "finished"
