"""Real sweeps, end to end, through the `echos` command line (slow: Ray starts for real).

* the shipped quick spec with --smoke-test: OptunaSearch + Repeater + ASHA on a local Ray
  instance, read back from the SQLite MLflow store;
* --resume after the driver is killed (SIGKILL) part-way: the sweep completes, finished trials
  are not run again, MLflow holds each trial exactly once with each epoch once;
* a two-node Ray cluster on loopback, logging over HTTP to a real `mlflow server`: trials run
  on both nodes and every run is on the server;
* `echos ui` serves the store on 127.0.0.1.

Every process a test starts is started in its own session and stopped by its process group
id (its own pid); waits are bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1", "DO_NOT_TRACK": "1",
       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "PYTHONUNBUFFERED": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)
ECHOS = [sys.executable, "-m", "echos_core"]


# --------------------------------------------------------------------------- process helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd, cwd, log: Path) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session (its pgid is its pid), output to ``log``."""
    f = open(log, "wb")
    return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=ENV, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, grace: float = 60.0) -> None:
    """Signal the process group ``proc`` leads; SIGKILL whatever is left after ``grace`` seconds."""
    pgid = proc.pid
    if _group_alive(pgid):
        os.killpg(pgid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 15
    while _group_alive(pgid) and time.time() < deadline:
        time.sleep(0.5)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=30)


def _echos(args, cwd, timeout: float = 420) -> subprocess.CompletedProcess:
    log = Path(cwd) / f"echos-{time.time_ns()}.log"
    proc = _start(ECHOS + list(args), cwd, log)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, signal.SIGKILL)
        pytest.fail(f"echos {' '.join(args)} ran past {timeout} s:\n{log.read_text()[-4000:]}")
    finally:
        if proc.poll() is None:
            _stop(proc)
    out = log.read_text(errors="replace")
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"{what} did not happen within {timeout} s\n{tail}")


# --------------------------------------------------------------------------- specs and reading MLflow


def _tiny_spec(name: str, **kw) -> dict:
    spec = {
        "name": name,
        "base": {
            "model": {"name": "convmixer", "dim": 8, "depth": 1, "kernel_size": 3, "patch_size": 2},
            "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
            "train": {"epochs": 3, "batch_size": 16, "steps_per_epoch": 2, "warmup_epochs": 0.5, "device": "cpu"},
        },
        "resources": {"cpus": 1},
        "ray": {"storage_path": "ray_results", "keep_checkpoints": 1},
    }
    spec.update(kw)
    return spec


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _runs(uri: str, experiment: str):
    """(parent runs, trial runs) of an experiment."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("echos.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("echos.role") != "sweep"]
    return client, parents, trials


def _check_trial_run(client, run, parent_id: str, max_epochs: int) -> list[int]:
    """A trial's run is complete and consistent; returns its logged epochs."""
    tags, params = run.data.tags, run.data.params
    assert tags["mlflow.parentRunId"] == parent_id
    for key in ("echos.sweep", "echos.trial_id", "echos.git_revision", "echos.torch_version",
                "echos.timm_version", "echos.ray_version", "echos.node_id"):
        assert tags.get(key), key
    for key in ("init.scheme", "model.kernel_size", "model.name", "train.lr", "seed"):
        assert key in params, key
    from echos_core.registry import applicable_keys  # the init keys of the trial's own scheme, and only those

    assert {k for k in params if k.startswith("init.")} == {"init.scheme", *applicable_keys(params["init.scheme"])}
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")]
    assert steps == list(range(1, len(steps) + 1)), steps  # every epoch once, in order
    for key in ("train_loss", "val_loss", "val_top5", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps
    stopped = len(steps) < max_epochs
    assert tags["echos.asha_stopped"] == ("true" if stopped else "false")
    assert tags["echos.status"] == ("stopped" if stopped else "finished")
    assert run.info.status == "FINISHED"  # ASHA stopping a trial is no failure
    assert run.info.end_time >= run.info.start_time
    assert tags["echos.last_epoch"] == str(len(steps))
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    mosaics = {a.path.split("/")[1].split("_")[0] for a in client.list_artifacts(run.info.run_id, "kernels")}
    assert mosaics == {"init", "final"}  # kernel mosaics at init and after the trial's last epoch
    assert "epoch" not in run.data.metrics  # the step, not a metric
    return steps


# --------------------------------------------------------------------------- local: the quick spec


def test_quick_smoke_sweep_optuna_asha_to_sqlite(tmp_path):
    res = _echos(["sweep", REPO / "sweeps" / "quick.yaml", "--smoke-test", "--storage-path", tmp_path / "ray"],
                 cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-6000:]
    out = res.stdout
    assert "trials: 4 = 2 configurations x 2 seeds" in out
    assert "best trial " in out and "checkpoint: " in out
    assert "open it: echos ui\n" in out  # the default store: nothing to add
    assert "#/experiments/1/runs?workflowType=machine_learning" in out  # the runs table, not the GenAI overview
    assert "paired differences" in out  # what the comparison found (or why there is none), then the link, last
    assert out.index("paired differences") < out.rindex("/#/experiments/1/runs?workflowType=machine_learning")
    assert "| Trial name" in out and "val_top1" in out  # Ray's progress table with our metric column
    assert "Result logdir:" not in out and f"Results: {tmp_path / 'ray'}/quick-smoke-" in out  # not Ray's temp folder
    assert not re.search(r"\d\.\d*(99999|00000)\d", out)  # no float noise (23.299999999999997) in the tables
    trial_dirs = list((tmp_path / "ray").glob("quick-smoke-*/trial_*"))
    assert len(trial_dirs) == 4 and all((d / "result.json").is_file() and (d / "progress.csv").is_file()
                                        for d in trial_dirs)  # Tune's JSON and CSV result logs
    assert not list((tmp_path / "ray").rglob("events.out.tfevents*"))  # not its TensorBoard logger (see runner)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store, in the working folder
    client, parents, trials = _runs(uri, "quick-smoke")
    assert len(parents) == 1 and len(trials) == 4
    parent = parents[0]
    assert parent.data.tags["echos.n_trials"] == "4"
    assert len({t.data.tags["echos.trial_id"] for t in trials}) == 4
    stopped = 0
    by_config = defaultdict(set)
    for run in trials:
        steps = _check_trial_run(client, run, parent.info.run_id, max_epochs=2)
        stopped += len(steps) < 2
        p = run.data.params
        assert p["model.name"] == "convmixer" and p["data.name"] == "embedded" and p["train.epochs"] == "2"
        assert p["init.scheme"] in ("kaiming", "default", "dog")
        assert 1e-3 <= float(p["train.lr"]) <= 1e-2
        by_config[(p["arm.init"], p["train.lr"])].add(p["seed"])
    # Repeater: each sampled configuration ran once per seed, with the seeds of the spec.
    assert len(by_config) == 2 and all(seeds == {"0", "1"} for seeds in by_config.values())
    assert parent.data.tags["echos.n_asha_stopped"] == str(stopped)
    assert f"{stopped} stopped early by ASHA" in out
    # Each trial keeps its own end time: the first to end did so before the last one started.
    assert min(t.info.end_time for t in trials) < max(t.info.start_time for t in trials)
    # The parent run holds the sweep: best value and counts as metrics, the per-configuration table, the report.
    best = max(t.data.metrics["val_top1"] for t in trials)
    assert parent.data.metrics == {"best_val_top1": best, "n_finished": 4.0 - stopped, "n_stopped": float(stopped),
                                   "n_failed": 0.0}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"by_configuration.csv", "report"} <= arts
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


# --------------------------------------------------------------------------- make demo: a complete paired comparison


def test_demo_smoke_pairs_the_given_configurations_and_asha_judges_the_sampled_one(tmp_path):
    res = _echos(["sweep", REPO / "sweeps" / "demo.yaml", "--smoke-test", "--storage-path", tmp_path / "ray"],
                 cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-6000:]
    out = res.stdout
    assert "trials: 8 = 4 configurations x 2 seeds" in out
    client, parents, trials = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "demo-smoke")
    assert len(parents) == 1 and len(trials) == 8
    given = defaultdict(dict)
    for run in trials:
        p = run.data.params
        if float(p["train.lr"]) == 0.003:
            given[p["arm.init"]][p["seed"]] = len(_check_trial_run(client, run, parents[0].info.run_id, max_epochs=2))
    # every given configuration ran with both seeds, to the full budget (ASHA never stopped one)
    assert given == {arm: {"0": 2, "1": 2} for arm in ("dog", "kaiming", "default")}
    # the end: paired differences of DoG against both baselines on both seeds, then the link to the runs table
    assert re.search(r"dog lr=0.003 - kaiming lr=0.003: [+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\], 2 pairs", out)
    assert re.search(r"dog lr=0.003 - default lr=0.003: .*, 2 pairs", out)
    assert out.index("paired differences") < out.rindex("#/experiments/1/runs?workflowType=machine_learning")
    assert not re.search(r"\d\.\d*(99999|00000)\d", out)  # no float noise in the tables
    assert "Exception ignored" not in res.stdout + res.stderr and "SystemExit" not in res.stdout + res.stderr


# --------------------------------------------------------------------------- --resume


def _finished_runs(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select count(*) from tags where key = 'echos.status' and value = 'finished' "
                               "and run_uuid in (select run_uuid from tags where key = 'echos.trial_id')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _lock_free(path: Path) -> bool:
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_resume_after_the_driver_is_killed(tmp_path):
    spec = _tiny_spec("resumable", space={"init.on_ratio": {"type": "uniform", "low": 0.0, "high": 1.0}},
                      search={"algorithm": "optuna", "seed": 0, "n_startup_trials": 2},
                      num_samples=3, max_concurrent=2, scheduler="none", seeds=[0, 1])
    path = _write(tmp_path, spec)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"

    log = tmp_path / "first.log"
    driver = _start(ECHOS + ["sweep", path], tmp_path, log)
    try:
        _wait_for(lambda: _finished_runs(db) >= 1, 300, "a first finished trial", driver, log)
    finally:
        _stop(driver, signal.SIGKILL)  # the driver and its local Ray instance, hard
    assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    # the killed driver's watchdog ends its Ray processes and runs, holding the sweep's lock meanwhile
    _wait_for(lambda: all(_lock_free(f) for f in (tmp_path / "ray_results").glob("*/.echos-driver.lock")), 120,
              "the killed driver's watchdog to finish")

    client, parents, trials = _runs(uri, "resumable")
    assert len(parents) == 1
    before = {r.info.run_id: [(m.step, m.timestamp) for m in client.get_metric_history(r.info.run_id, "val_top1")]
              for r in trials if r.data.tags.get("echos.status") == "finished"}
    assert 1 <= len(before) < 6

    res = _echos(["sweep", path, "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "resuming sweep resumable-" in res.stdout
    assert "6 trials" in res.stdout and "6 finished" in res.stdout, res.stdout[-3000:]

    client, parents2, trials = _runs(uri, "resumable")
    assert [p.info.run_id for p in parents2] == [parents[0].info.run_id]  # the same sweep parent run
    assert parents2[0].data.tags["echos.status"] == "finished"
    assert len(trials) == 6  # each trial exactly once
    trial_ids = {t.data.tags["echos.trial_id"] for t in trials}
    assert len(trial_ids) == 6
    # A trial that had started but was not yet in Ray's last experiment snapshot when the driver
    # died is unknown to the resumed sweep (the searcher suggests again). Its partial run is
    # dropped: tagged orphaned and soft-deleted.
    from mlflow.entities import ViewType

    exp_id = client.get_experiment_by_name("resumable").experiment_id
    for run in client.search_runs([exp_id], run_view_type=ViewType.DELETED_ONLY):
        assert run.data.tags["echos.status"] == "orphaned" and run.data.tags["echos.trial_id"] not in trial_ids
    by_config = defaultdict(set)
    for run in trials:
        assert _check_trial_run(client, run, parents[0].info.run_id, max_epochs=3) == [1, 2, 3]
        by_config[run.data.params["init.on_ratio"]].add(run.data.params["seed"])
    assert len(by_config) == 3 and all(seeds == {"0", "1"} for seeds in by_config.values())
    # Trials that had finished before the kill were not trained again: their history is untouched.
    for run_id, history in before.items():
        assert [(m.step, m.timestamp) for m in client.get_metric_history(run_id, "val_top1")] == history


# --------------------------------------------------------------------------- a two-node cluster, MLflow over HTTP


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = root / "server.log"
    proc = _start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port,
                   "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                   "--artifacts-destination", root / "artifacts", "--workers", "1"], root, log)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait_for(healthy, 180, "mlflow server /health", proc, log)
        yield url
    finally:
        _stop(proc)


def _ray_nodes(address: str) -> list[str]:
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps(sorted(n['NodeID'] for n in ray.nodes() if n['Alive']))); ray.shutdown()" % address)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _two_node_cluster(root: Path, head_cpus: int = 1):
    """A head (``head_cpus`` CPUs) and a worker node (1 CPU) on loopback, started with `ray start --block`:
    yields (address, [head and worker node ids], the worker node's process)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats", "--block"]
    procs = []
    try:
        head_log = root / "head.log"
        head = _start([ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                       "--include-dashboard=false", f"--temp-dir={temp}", f"--num-cpus={head_cpus}", *common],
                      root, head_log)
        procs.append(head)
        _wait_for(lambda: "Ray runtime started" in head_log.read_text(errors="replace"), 180, "ray head", head, head_log)
        worker_log = root / "worker.log"
        worker = _start([ray_bin, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                         *common],
                        root, worker_log)
        procs.append(worker)
        _wait_for(lambda: "Ray runtime started" in worker_log.read_text(errors="replace"), 180, "ray worker",
                  worker, worker_log)
        nodes = _wait_for(lambda: (lambda n: n if len(n) == 2 else None)(_ray_nodes(address)), 120, "2 alive nodes")
        yield address, nodes, worker
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """The two-node loopback cluster the cluster tests share: (address, node ids)."""
    with _two_node_cluster(tmp_path_factory.mktemp("ray-cluster")) as (address, nodes, _):
        yield address, nodes


def test_cluster_sweep_logs_over_http_from_both_nodes(tmp_path, mlflow_server, ray_cluster):
    address, node_ids = ray_cluster
    spec = _tiny_spec(
        "cluster", search="grid", scheduler="none", seeds=[0, 1],
        space={"init": {"type": "grid", "values": [{"init.scheme": "kaiming"},
                                                   {"init.scheme": "dog", "init.on_ratio": 0.25}]}})
    spec["base"]["train"]["epochs"] = 2
    path = _write(tmp_path, spec)
    res = _echos(["sweep", path, "--address", address, "--tracking-uri", mlflow_server,
                  "--storage-path", tmp_path / "shared"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "2 node(s)" in res.stdout and "4 finished" in res.stdout

    client, parents, trials = _runs(mlflow_server, "cluster")
    assert len(parents) == 1 and len(trials) == 4
    for run in trials:
        assert _check_trial_run(client, run, parents[0].info.run_id, max_epochs=2) == [1, 2]
    # Trials ran on both nodes, and each logged straight to the server from there.
    assert {r.data.tags["echos.node_id"] for r in trials} == set(node_ids)
    arms = sorted((r.data.params["init.scheme"], r.data.params.get("init.on_ratio"), r.data.params["seed"])
                  for r in trials)  # Kaiming reads no init.on_ratio: it has no such param
    assert arms == [("dog", "0.25", "0"), ("dog", "0.25", "1"), ("kaiming", None, "0"), ("kaiming", None, "1")]


# --------------------------------------------------------------------------- data-parallel trials (Ray Train)

# A 2-worker trial vs one process with the same global batch and seed, per epoch: absolute
# differences (top-1 in percent points).  The only differences are summation order and batch
# norm, which normalises each worker's half batch with its own statistics.
DDP_TOLERANCE = {"train_loss": 0.05, "val_loss": 0.05, "val_top1": 5.0}


def _ddp_spec(name: str, placement: str, cpus: float, epochs: int, fake_size: int) -> dict:
    spec = _tiny_spec(name, search="grid", scheduler="none", seeds=[0])
    spec["base"]["data"]["fake_size"] = fake_size
    spec["base"]["train"].update(epochs=epochs, steps_per_epoch=None, threads=1)
    spec["resources"] = {"workers": 2, "cpus": cpus, "placement": placement}
    return spec


def test_data_parallel_trial_on_two_nodes_matches_one_process(tmp_path, mlflow_server, ray_cluster):
    from echos_core.config import config_from_dict
    from echos_core.trainer import train

    address, node_ids = ray_cluster
    spec = _ddp_spec("ddp", "STRICT_SPREAD", 0.5, epochs=3, fake_size=128)  # a worker on each node
    path = _write(tmp_path, spec)
    dry = _echos(["sweep", path, "--dry-run", "--address", address], cwd=tmp_path)
    assert dry.returncode == 0 and "2 live node(s) can place a trial of 2 workers" in dry.stdout, dry.stdout[-3000:]
    t0 = time.time()
    res = _echos(["sweep", path, "--address", address, "--tracking-uri", mlflow_server,
                  "--storage-path", tmp_path / "shared"], cwd=tmp_path)
    ddp_wall = time.time() - t0
    assert res.returncode == 0, res.stdout[-6000:]
    assert "1 finished" in res.stdout

    client, parents, trials = _runs(mlflow_server, "ddp")
    assert len(parents) == 1 and len(trials) == 1  # one MLflow run for the trial, not one per worker
    run = trials[0]
    assert _check_trial_run(client, run, parents[0].info.run_id, max_epochs=3) == [1, 2, 3]
    assert run.data.tags["echos.world_size"] == "2"
    assert sorted(run.data.tags["echos.nodes"].split(",")) == sorted(node_ids)  # the workers on different nodes

    cfg = config_from_dict({**spec["base"], "seed": 0})
    t0 = time.time()
    single = train(cfg, run_dir=tmp_path / "single").history
    single_wall = time.time() - t0
    ddp = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in (*DDP_TOLERANCE, "epoch_time_s")}
    worst = {k: max(abs(a - h[k]) for a, h in zip(ddp[k], single, strict=True)) for k in DDP_TOLERANCE}
    ratio = sum(ddp["epoch_time_s"]) / sum(h["epoch_time_s"] for h in single)
    print(f"\ndata-parallel agreement (max |2 workers - 1 process| over 3 epochs): {worst}; epoch time ratio "
          f"2 workers / 1 process {ratio:.2f}; sweep wall {ddp_wall:.0f} s vs train() {single_wall:.1f} s")
    for key, tol in DDP_TOLERANCE.items():
        assert worst[key] <= tol, (key, ddp[key], [h[key] for h in single])


def _max_epoch_logged(uri: str, experiment: str) -> int:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    steps = [m.step for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("echos.trial_id")
             for m in client.get_metric_history(r.info.run_id, "val_top1")]
    return max(steps, default=0)


def _trial_nodes(uri: str, experiment: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp is not None else []
    return [n for r in runs for n in r.data.tags.get("echos.nodes", "").split(",") if n]


def test_data_parallel_trial_resumes_after_losing_the_worker_node(tmp_path, mlflow_server):
    """The worker node dies mid-trial; the trial goes on on the head alone (2 CPUs: room for both
    workers, and for the bundle a dead trial process may leave held: Ray Train's placement-group
    cleaner needs the dashboard, which this cluster does not run)."""
    epochs = 12
    spec = _ddp_spec("ddp-kill", "SPREAD", 0.45, epochs=epochs, fake_size=512)
    spec["base"]["model"].update(dim=16, depth=2)
    path = _write(tmp_path, spec)
    (tmp_path / "cluster").mkdir()
    with _two_node_cluster(tmp_path / "cluster", head_cpus=2) as (address, node_ids, worker):
        log = tmp_path / "driver.log"
        driver = _start(ECHOS + ["sweep", path, "--address", address, "--tracking-uri", mlflow_server,
                                 "--storage-path", tmp_path / "shared"], tmp_path, log)
        try:
            _wait_for(lambda: _max_epoch_logged(mlflow_server, "ddp-kill") >= 2, 400, "epoch 2 of the trial",
                      driver, log)
            killed_after = _max_epoch_logged(mlflow_server, "ddp-kill")
            assert sorted(_trial_nodes(mlflow_server, "ddp-kill")) == sorted(node_ids)  # a worker on each node
            _stop(worker, signal.SIGKILL)  # the worker node and every process on it, hard
            driver.wait(timeout=600)
        finally:
            if driver.poll() is None:
                _stop(driver)
    out = log.read_text(errors="replace")
    assert driver.returncode == 0, out[-6000:]
    assert killed_after < epochs, "the trial finished before the node was killed: nothing was tested"
    assert "resumed from" in out, out[-6000:]  # the trainer restarted from a checkpoint, not from scratch
    client, parents, trials = _runs(mlflow_server, "ddp-kill")
    assert len(parents) == 1 and len(trials) == 1  # no duplicated run
    # every epoch logged exactly once, in order, and the run finished
    assert _check_trial_run(client, trials[0], parents[0].info.run_id, max_epochs=epochs) == list(range(1, epochs + 1))


def test_asha_stopped_data_parallel_trial_ends_and_frees_its_workers(tmp_path):
    """ASHA ends a 2-worker trial abruptly (its process is killed, and with it Ray Train's controller);
    Ray Train's placement-group cleaner frees the workers' CPUs (it needs the state API: the dashboard
    of ``ray[default]``), so the next trial starts and the sweep ends.  Without the cleaner the second
    trial waits for ever for CPUs held by the first, whose end ASHA also decides (at max_t)."""
    epochs = 8
    spec = _ddp_spec("ddp-asha", "PACK", 0.5, epochs=epochs, fake_size=256)
    spec.update(space={"train.lr": {"type": "grid", "values": [0.01, 0.00001]}},  # the second is worse at epoch 1
                scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}, metric="val_loss", mode="min")
    path = _write(tmp_path, spec)
    res = _echos(["sweep", path, "--storage-path", tmp_path / "ray"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "1 finished, 1 stopped early by ASHA, 0 failed" in res.stdout, res.stdout[-3000:]
    client, parents, trials = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ddp-asha")
    assert len(parents) == 1 and len(trials) == 2
    # FINISHED, tagged as stopped early when it was, each epoch once; the stopped trial's workers may have
    # trained a little past epoch 1 before the stop reached them (Ray Train's reports are queued), never to the end.
    epochs_of = {run.data.params["train.lr"]: _check_trial_run(client, run, parents[0].info.run_id, max_epochs=epochs)
                 for run in trials}
    assert epochs_of["0.01"] == list(range(1, epochs + 1)) and 1 <= len(epochs_of["1e-05"]) < epochs, epochs_of
    assert all(run.data.tags["echos.world_size"] == "2" for run in trials)


# --------------------------------------------------------------------------- echos ui


def test_ui_serves_the_store_on_loopback(tmp_path):
    port = _free_port()
    log = tmp_path / "ui.log"
    proc = _start(ECHOS + ["ui", "--port", port, "--backend-store-uri", f"sqlite:///{tmp_path / 'ui.db'}"],
                  tmp_path, log)
    try:
        _wait_for(lambda: f"MLflow UI: http://127.0.0.1:{port}" in log.read_text(errors="replace"), 180,
                  "the UI address line", proc, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
    finally:
        _stop(proc, signal.SIGINT)
