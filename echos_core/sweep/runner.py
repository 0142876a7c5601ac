"""Run a validated :class:`SweepSpec` with Ray Tune: search, scheduler, MLflow, resume.

Composition (all of it Ray Tune's and Optuna's own machinery)::

    Tuner(trial_trainable(spec, ctx),   # run_trial with {cpu, gpu}, or Ray Train workers (sweep/ddp.py)
          TuneConfig(search_alg, scheduler, metric, mode, num_samples),
          RunConfig(storage_path, name=<sweep id>, FailureConfig, CheckpointConfig,
                    callbacks=[MlflowTrialStatus], progress_reporter=CLIReporter))

* optuna / random: ``ConcurrencyLimiter(Repeater(OptunaSearch(space, TPESampler(seed) or
  RandomSampler(seed)), repeat=len(seeds), set_index=True))``.  The Repeater hands one
  suggestion to ``len(seeds)`` consecutive trials, with ``__trial_index__`` 0..n-1 that the
  trainable maps to ``seeds[i]``; Optuna is told the mean of the seeds' final metrics.
* grid: Ray's grid search (``BasicVariantGenerator``) over every grid dimension and the seed.
* scheduler: ``ASHAScheduler(time_attr='epoch', max_t, grace_period, reduction_factor)`` or FIFO.

Every sweep run is a Ray experiment ``<storage>/<name>-<YYYYmmdd-HHMMSS>`` (the sweep id) with
``echos_sweep.json`` beside Ray's state: the spec as run and the MLflow parent run.  ``--resume``
picks the newest such folder of this sweep name and calls ``Tuner.restore`` on it.  A new id's folder
is claimed atomically, and the driver holds ``.echos-driver.lock`` in it while it runs, so two launches
never share an id and a second driver of one sweep is refused.

:func:`run_sweep` returns the exit status: 0 when every trial finished or was stopped by the scheduler,
1 when a trial failed for good (named on stderr), 130 when the driver was interrupted (SIGINT/SIGTERM: the
trials it stopped and the parent run are marked interrupted, never FINISHED).  The parent run never stays
RUNNING on any other exit path either, and a local Ray instance never outlives its driver (a watchdog
process ends it if the driver is killed, and marks the runs the driver left RUNNING as interrupted).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TextIO

from ..tracking import ROLE_SWEEP, TAG_ROLE, TAG_STATUS, TAG_STORAGE, TAG_SWEEP, TAG_SWEEP_ID
from ..config import flatten
from ..validation import short_repr
from .spec import SpecError, SweepSpec
from .ddp import trial_trainable
from .parent import finish_parent
from .summary import summarise, where_lines
from .trainable import TrialContext, error_line, trial_dirname
from .watchdog import pid_alive

__all__ = ["run_sweep", "resolve_storage", "find_sweep_dirs", "SWEEP_FILE"]

SWEEP_FILE = "echos_sweep.json"
_TS_FORMAT = "%Y%m%d-%H%M%S"
# Variables every trial process needs, on every node (Ray passes them through the runtime env).
_WORKER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1",
               "DO_NOT_TRACK": "1", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


# --------------------------------------------------------------------------- storage helpers


def resolve_storage(path: str) -> str:
    """A URI (``s3://``, ``gs://``...) as is; a local path made absolute against the current folder."""
    if "://" in path:
        return path.rstrip("/")
    return str(Path(path).expanduser().resolve())


def _fs(storage: str):
    import pyarrow.fs

    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), storage


def _read_json(storage: str, rel: str) -> Optional[dict]:
    fs, root = _fs(storage)
    try:
        with fs.open_input_stream(f"{root}/{rel}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        return None


def _write_json(storage: str, rel: str, data: dict) -> None:
    fs, root = _fs(storage)
    fs.create_dir(f"{root}/{rel.rsplit('/', 1)[0]}", recursive=True)
    with fs.open_output_stream(f"{root}/{rel}") as f:
        f.write((json.dumps(data, indent=2, default=str) + "\n").encode())


def find_sweep_dirs(storage: str, name: str) -> list[str]:
    """Sweep ids ``<name>-<YYYYmmdd-HHMMSS>`` under ``storage`` that hold an ``echos_sweep.json``, oldest first."""
    import pyarrow.fs

    fs, root = _fs(storage)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    out = []
    for info in infos:
        base = info.base_name
        if info.type == pyarrow.fs.FileType.Directory and base.startswith(name + "-"):
            stamp = base[len(name) + 1:]
            try:
                time.strptime(stamp, _TS_FORMAT)
            except ValueError:
                continue
            if _read_json(storage, f"{base}/{SWEEP_FILE}") is not None:
                out.append(base)
    return sorted(out)


# --------------------------------------------------------------------------- search and scheduler


def _search_alg(spec: SweepSpec, max_concurrent: int):
    from ray.tune.search import ConcurrencyLimiter, Repeater

    if spec.search.algorithm == "grid":
        return None  # Ray's BasicVariantGenerator over the grid_search param_space
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    space: dict[str, Any] = {}
    for p in spec.params:
        if p.type == "uniform":
            space[p.key] = FloatDistribution(p.low, p.high)
        elif p.type == "loguniform":
            space[p.key] = FloatDistribution(p.low, p.high, log=True)
        elif p.type == "int":
            space[p.key] = IntDistribution(int(p.low), int(p.high), step=int(p.step))
        else:
            space[p.key] = CategoricalDistribution(p.labels)
    if spec.search.algorithm == "optuna":
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=spec.search.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(space=space, metric=spec.metric, mode=spec.mode, sampler=sampler,
                            study_name=spec.name, points_to_evaluate=[dict(pt) for pt in spec.search.points_to_evaluate])
    searcher = Repeater(searcher, repeat=len(spec.seeds), set_index=True)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _param_space(spec: SweepSpec) -> dict:
    from ray import tune

    if spec.search.algorithm != "grid":
        return {}
    space = {p.key: tune.grid_search(p.labels) for p in spec.params}
    space["seed"] = tune.grid_search(list(spec.seeds))
    return space


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    if s.type == "asha":
        kwargs = dict(time_attr="epoch", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
        if s.full_budget:
            from .asha import FullBudgetASHA

            return FullBudgetASHA(spec.search.points_to_evaluate, **kwargs)
        return ASHAScheduler(**kwargs)
    return FIFOScheduler()


def _trial_dirname(trial) -> str:
    return trial_dirname(trial.trial_id)


def _reporter(spec: SweepSpec, exp_path: str):
    from .status import SweepReporter

    params = {p.key: p.key.rsplit(".", 1)[-1] if not p.is_arm else p.key for p in spec.params}
    if spec.search.algorithm == "grid":
        params["seed"] = "seed"
    metrics = {"epoch": "epoch", spec.metric: spec.metric}
    for m in ("val_top1", "val_loss", "train_loss"):
        metrics.setdefault(m, m)
    if spec.search.algorithm != "grid":
        metrics["seed"] = "seed"
    return SweepReporter(exp_path, parameter_columns=params, metric_columns=metrics, max_report_frequency=15,
                         sort_by_metric=True, max_progress_rows=30, max_column_length=28)


# --------------------------------------------------------------------------- running


def _state_api(spec: SweepSpec, address: Optional[str]) -> tuple[dict, dict]:
    """(ray.init arguments, worker env) that give a data-parallel sweep Ray's state API.

    When Tune ends a data-parallel trial abruptly (ASHA stops it, its process dies), Ray Train's
    ``PlacementGroupCleaner`` frees the trial's worker placement group once it sees, through the state
    API, that the trial's controller is dead; without the API the workers' CPUs and GPUs stay held
    and the next trial waits for ever.  The API is served by the dashboard (``ray[default]``), found
    by every worker through ``RAY_API_SERVER_ADDRESS`` (a local instance) or ``RAY_ADDRESS`` (a
    cluster): auto-detection fails when one machine runs several Ray instances."""
    if spec.workers == 1:
        return ({} if address else {"include_dashboard": False}), {}
    if address:
        return {}, {"RAY_ADDRESS": address}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ({"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port},
            {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"})


def _init_ray(spec: SweepSpec, address: Optional[str], out: TextIO) -> None:
    import ray

    init_args, env = _state_api(spec, address)
    runtime_env = {"env_vars": {**_WORKER_ENV, **env}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        import fcntl
        import tempfile

        num_cpus = spec.num_cpus or os.cpu_count() or 1
        # One local start-up at a time on this machine: two drivers launched together would each start
        # a Ray instance at once, and on a loaded machine one of them times out.
        with open(Path(tempfile.gettempdir()) / "echos-ray-start.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # address="local": always a fresh instance of our own, never a cluster someone else started.
                # No prestarted workers (Ray starts one per CPU at the end of ray.init, each importing Ray):
                # Tune never uses them, its trial actors carry a runtime_env of their own and get new workers,
                # and on a small machine they take the CPU the start-up needs.
                os.environ.setdefault("RAY_enable_worker_prestart", "0")
                os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
                ray.init(address="local", num_cpus=num_cpus, object_store_memory=256 * 1024**2,
                         runtime_env=runtime_env, log_to_driver=True, **init_args)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    print(f"ray: {'cluster ' + address if address else 'local instance'}: {len(nodes)} node(s), "
          f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU", file=out, flush=True)


def _check_fits(spec: SweepSpec, address: Optional[str]) -> None:
    """A trial that the cluster cannot place would wait forever: say so now (exit status 2)."""
    import ray

    from .placement import check_placement

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    check_placement(spec, nodes, f"the cluster at {address}" if address else "this machine's Ray instance")


def _max_concurrent(spec: SweepSpec) -> int:
    import ray

    if spec.max_concurrent:
        return spec.max_concurrent
    res = ray.cluster_resources()
    fit = res.get("CPU", 1) / spec.trial_cpus
    if spec.gpus:
        fit = min(fit, res.get("GPU", 0) / spec.trial_gpus)
    return max(1, int(fit))


def _parent_params(spec: SweepSpec) -> dict:
    d = {
        "search.algorithm": spec.search.algorithm,
        "search.seed": spec.search.seed,
        "num_samples": spec.num_samples,
        "n_trials": spec.n_trials,
        "seeds": spec.seeds,
        "scheduler": spec.scheduler.describe(),
        "metric": spec.metric,
        "mode": spec.mode,
        "resources.cpus": spec.cpus,
        "resources.gpus": spec.gpus,
        "resources.workers": spec.workers,
        "resources.placement": spec.placement,
    }
    for p in spec.params:
        d[f"space.{p.key}"] = p.describe()
    return d


def _driver_env() -> None:
    for k, v in _WORKER_ENV.items():
        os.environ.setdefault(k, v)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Ray's CLIReporter table with our metric columns


def import_driver_modules(spec: SweepSpec) -> None:
    """Import what :func:`run_sweep` uses (Ray Tune, Optuna, the MLflow client and its SQL store): imports
    only, nothing starts.  ``echos sweep`` calls it while the spec is checked in a child process."""
    _driver_env()
    import mlflow.tracking  # noqa: F401
    import ray.tune  # noqa: F401

    from . import status  # noqa: F401

    if spec.search.algorithm != "grid":
        import ray.tune.search.optuna  # noqa: F401
    from ..tracking import resolve_tracking_uri

    if resolve_tracking_uri(spec.tracking_uri).startswith("sqlite:"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, resume: bool = False,
              out: TextIO = sys.stdout) -> int:
    """Run (or ``resume``) the sweep; print progress and the summary.  Returns the exit status: 0 when every
    trial finished or was stopped by the scheduler, 1 when a trial failed for good, 130 when interrupted."""
    _driver_env()
    from ..tracking import is_remote_tracking_uri, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    storage = resolve_storage(spec.storage_path)
    if "://" not in storage:  # Tune's "snapshotting may become a bottleneck", every few seconds of a sweep of
        # short epochs, is about uploads to remote storage; a local snapshot is one small file write
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        if not is_remote_tracking_uri(tracking_uri):
            print(f"echos: warning: mlflow.tracking_uri {tracking_uri} is not a server; on a cluster every node "
                  "must reach it (run `mlflow server` and use http://HOST:PORT)", file=sys.stderr)
        if "://" not in storage:
            print(f"echos: warning: ray.storage_path {storage} is a local folder; on a cluster it must be shared "
                  "by every node (NFS) or be a bucket URI (s3://...)", file=sys.stderr)

    # ---- which sweep: new (a fresh id, claimed), or the newest of this name to resume
    if resume:
        ids = find_sweep_dirs(storage, spec.name)
        if not ids:
            raise SpecError("--resume", spec.name, f"no earlier sweep of this name under {storage}")
        sweep_id = ids[-1]
        saved = _read_json(storage, f"{sweep_id}/{SWEEP_FILE}") or {}
        _check_same_spec(spec, saved, tracking_uri)
        parent_run_id = saved.get("parent_run_id")
    else:
        sweep_id, parent_run_id = _claim_sweep_id(storage, spec.name), None
    with _driver_lock(storage, sweep_id) as lock:
        _init_ray(spec, address, out)
        import ray

        watchdog = None if address else _start_watchdog(lock, tracking_uri, spec.experiment, sweep_id)
        try:
            _check_fits(spec, address)
            return _run_with_parent(spec, sweep_id, parent_run_id, tracking_uri, storage, resume, out)
        finally:
            ray.shutdown()
            if watchdog is not None:
                watchdog.kill()
                watchdog.wait()


def _run_with_parent(spec: SweepSpec, sweep_id: str, parent_run_id: Optional[str], tracking_uri: str, storage: str,
                     resume: bool, out: TextIO) -> int:
    """Create (or reopen) the sweep's parent run and fit; the parent never stays RUNNING, whatever happens."""
    from ..tracking import TAG_ERROR, MlflowRun

    exp_path = f"{storage}/{sweep_id}"
    _create_store(tracking_uri)
    parent = MlflowRun(tracking_uri, spec.experiment, sweep_id, _parent_params(spec),
                       {TAG_SWEEP: spec.name, TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_SWEEP,
                        TAG_STATUS: "running", TAG_STORAGE: exp_path},
                       run_id=parent_run_id)
    try:
        if not resume:
            _write_json(storage, f"{sweep_id}/{SWEEP_FILE}", {
                "sweep_id": sweep_id, "name": spec.name, "parent_run_id": parent.run_id,
                "tracking_uri": tracking_uri, "experiment": spec.experiment, "spec": spec.summary_dict(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")})
            if spec.source:
                parent.log_artifact(spec.source)
        print(f"{'resuming' if resume else 'starting'} sweep {sweep_id}: {spec.n_trials} trials -> {exp_path}",
              file=out, flush=True)
        return _fit(spec, sweep_id, parent, tracking_uri, storage, resume, out)
    except BaseException as e:  # interrupted outside Tune's loop, or a failure of the driver itself
        interrupted = isinstance(e, KeyboardInterrupt)
        _end_quietly(parent, "KILLED" if interrupted else "FAILED",
                     {TAG_STATUS: "interrupted" if interrupted else "error",
                      **({} if interrupted else {TAG_ERROR: " ".join(f"{type(e).__name__}: {e}".split())[:500]})})
        raise


def _create_store(tracking_uri: str) -> None:
    """Create (or migrate) a SQLite store under a file lock: two drivers starting at once on a new store
    would otherwise both run MLflow's schema migrations and both fail."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    import fcntl

    from ..tracking import mlflow_client

    db = Path(tracking_uri[len("sqlite:///"):])
    with open(db.parent / f".{db.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow_client(tracking_uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _end_quietly(run, status: str, tags: dict) -> None:
    try:
        run.set_tags(tags)
    except Exception as e:  # the store may be what failed; the run must still be ended if it can be
        print(f"echos: warning: could not tag the sweep's parent run: {e}", file=sys.stderr)
    try:
        run.end(status)
    except Exception as e:
        print(f"echos: warning: could not end the sweep's parent run {run.run_id} ({status}): {e}", file=sys.stderr)


def _fit(spec: SweepSpec, sweep_id: str, parent, tracking_uri: str, storage: str, resume: bool, out: TextIO) -> int:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from .status import MlflowTrialStatus, interruption

    exp_path = f"{storage}/{sweep_id}"
    ctx = TrialContext(spec=spec, sweep_id=sweep_id, tracking_uri=tracking_uri, parent_run_id=parent.run_id,
                       storage=storage)
    trainable = trial_trainable(spec, ctx)  # one process per trial, or Ray Train's workers (.ddp)
    # Tune's CSV and JSON result loggers, given below (a restored sweep keeps them); not its automatic
    # TensorBoard logger, which imports tensorboardX and with it torch in the driver before the first
    # trial starts (2-5 s on this machine), for event files nothing in echos reads.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if resume:
        if not tune.Tuner.can_restore(exp_path):
            raise SpecError("--resume", sweep_id, f"{exp_path} holds no Ray Tune state to restore (the sweep "
                                                  "stopped before its first trial); start it again without --resume")
        # (the restored tuner runs with the MlflowTrialStatus callback it was started with)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        callback = MlflowTrialStatus(tracking_uri, spec.experiment, sweep_id)
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, search_alg=_search_alg(spec, _max_concurrent(spec)),
                scheduler=_scheduler(spec), num_samples=spec.n_trials if spec.search.algorithm != "grid" else 1,
                max_concurrent_trials=_max_concurrent(spec) if spec.search.algorithm == "grid" else None,
                trial_dirname_creator=_trial_dirname,
                # one worker process per slot: torch & co. import once, not per trial (a data-parallel
                # trial's process only waits on Ray Train: a fresh one per trial, as Ray requires)
                reuse_actors=spec.workers == 1),
            run_config=tune.RunConfig(
                name=sweep_id, storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints,
                                                        checkpoint_score_attribute=spec.metric,
                                                        checkpoint_score_order=spec.mode),
                callbacks=[callback, CSVLoggerCallback(), JsonLoggerCallback()],
                progress_reporter=_reporter(spec, exp_path), verbose=1),
        )
    t0 = time.time()
    results = tuner.fit()
    wall = time.time() - t0
    signame = interruption(sweep_id)
    if signame:
        return _report_interrupted(spec, sweep_id, parent, results, signame, out)
    summary = summarise(spec, results, wall, sweep_id, out)
    failed = [r for r in results if r.error is not None]
    parent.set_tags({TAG_STATUS: "error" if failed else "finished", **summary.tags})
    finish_parent(parent, spec, summary, sweep_id, out)
    parent.end("FAILED" if failed else "FINISHED")
    print("\n".join(where_lines(spec, tracking_uri, parent.run_id, parent.experiment_id)), file=out, flush=True)
    if failed:
        print(f"echos: error: {len(failed)} of {len(results)} trials failed: "
              + "; ".join(f"{_trial_id(r)} ({error_line(r.error)})" for r in failed[:10])
              + (f"; ... {len(failed) - 10} more" if len(failed) > 10 else ""), file=sys.stderr)
        return 1
    return 0


def _trial_id(result) -> str:
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


def _report_interrupted(spec: SweepSpec, sweep_id: str, parent, results, signame: str, out: TextIO) -> int:
    """An interrupted sweep says so, marks its parent run, and tells how to continue; exit status 130."""
    done = sum(1 for r in results if r.error is None and (r.metrics or {}).get("epoch") is not None
               and (r.metrics or {}).get("max_epochs") is not None
               and int(r.metrics["epoch"]) >= int(r.metrics["max_epochs"]))
    _end_quietly(parent, "KILLED", {TAG_STATUS: "interrupted"})
    again = shlex.join(["echos", "sweep", spec.source or f"{spec.name}.yaml", "--resume"])
    print(f"\nsweep {sweep_id} interrupted ({signame}): {done} of {spec.n_trials} trials had finished; the "
          f"others are marked interrupted (KILLED) in MLflow and no result is final. Continue it with: {again}",
          file=out, flush=True)
    return 130


def _claim_sweep_id(storage: str, name: str) -> str:
    """A new sweep id ``<name>-<YYYYmmdd-HHMMSS>`` that no other launch has: on local storage its folder is
    created atomically (a second launch in the same second takes the next second)."""
    for _ in range(120):
        sweep_id = f"{name}-{time.strftime(_TS_FORMAT)}"
        if "://" in storage:
            if not find_sweep_dirs(storage, name)[-1:] == [sweep_id]:
                return sweep_id
        else:
            Path(storage).mkdir(parents=True, exist_ok=True)
            try:
                (Path(storage) / sweep_id).mkdir()
                return sweep_id
            except FileExistsError:
                pass
        time.sleep(1.0)
    raise SpecError("ray.storage_path", storage, f"no free sweep id for {name} after 120 s")


@contextmanager
def _driver_lock(storage: str, sweep_id: str):
    """Hold ``<storage>/<sweep id>/.echos-driver.lock`` while this driver runs (local storage): a second
    driver of the same sweep (a concurrent --resume) is refused with one line.  The kernel frees the lock
    when the driver dies, even by SIGKILL (then once its watchdog, which inherits it, has ended the driver's
    Ray processes and runs)."""
    if "://" in storage:
        yield None
        return
    import fcntl

    folder = Path(storage) / sweep_id
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".echos-driver.lock", "a+") as f:
        if not _lock(f) and not (_held_by_a_watchdog(f) and _lock(f, wait=_WATCHDOG_WAIT_S)):
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise SpecError("--resume", sweep_id, f"is being run by another driver ({holder}) on {storage}; "
                                                  "wait for it to end, or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_WATCHDOG_WAIT_S = 60.0  # a killed driver's watchdog ends its Ray processes and runs in about 10 s


def _lock(f, wait: float = 0.0) -> bool:
    """Take the exclusive lock on ``f``, trying for up to ``wait`` seconds."""
    import fcntl

    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def _held_by_a_watchdog(f) -> bool:
    """Whether the lock's holder is the watchdog of a driver that died (it inherits the lock, and says so
    in the file once it sees the driver gone; until then the file names the dead driver's pid)."""
    f.seek(0)
    holder = f.read().strip()
    if holder.startswith("the watchdog"):
        return True
    parts = holder.split()  # "pid N on HOST"
    if len(parts) == 4 and parts[0] == "pid" and parts[2] == "on" and parts[3] == socket.gethostname():
        try:
            return not pid_alive(int(parts[1]))
        except (ValueError, OverflowError):
            return False
    return False


def _start_watchdog(lock, tracking_uri: str, experiment: str, sweep_id: str):
    """The process that ends the local Ray instance's processes, and marks the sweep's runs interrupted, if
    this driver dies without ``ray.shutdown()`` (SIGKILL): :mod:`echos_core.sweep.watchdog`."""
    import subprocess

    import ray

    node = ray._private.worker._global_node  # the local head node this driver started
    pids = [p.process.pid for infos in node.all_processes.values() for p in infos if p.process is not None]
    fd = lock.fileno() if lock is not None else -1
    return subprocess.Popen([sys.executable, "-m", "echos_core.sweep.watchdog", str(os.getpid()), str(fd),
                             tracking_uri, experiment, sweep_id, *map(str, pids)],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, pass_fds=(fd,) if fd >= 0 else ())


def _check_same_spec(spec: SweepSpec, saved: dict, tracking_uri: str) -> None:
    old_spec = dict(saved.get("spec") or {})
    new_spec = json.loads(json.dumps(spec.summary_dict(), default=str))
    _check_same_space(old_spec.pop("params", None) or [], new_spec.pop("params", None) or [])
    old, new = flatten(old_spec), flatten(new_spec)
    for key in ("num_cpus", "max_concurrent", "description"):  # how it runs here, not what it runs
        old.pop(key, None)
        new.pop(key, None)
    for d in (old, new):  # how it is analysed (the analysis: section), not what it runs
        for key in [k for k in d if k == "analysis" or k.startswith("analysis.")]:
            d.pop(key)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise SpecError(f"--resume {key}", new.get(key),
                            f"differs from the sweep being resumed ({short_repr(old.get(key))}); resume with the "
                            "spec as it was started, or start a new sweep")
    if saved.get("tracking_uri") and saved["tracking_uri"] != tracking_uri:
        raise SpecError("--resume mlflow.tracking_uri", tracking_uri,
                        f"differs from the sweep being resumed ({saved['tracking_uri']})")




def _check_same_space(old: list, new: list) -> None:
    """The space of a resumed sweep must be the one it was started with: one line naming ``space.<key>``."""
    old_by, new_by = {p.get("key"): p for p in old}, {p.get("key"): p for p in new}
    for key in list(new_by) + [k for k in old_by if k not in new_by]:
        a, b = old_by.get(key), new_by.get(key)
        if a == b:
            continue
        if a is None or b is None:
            raise SpecError(f"--resume space.{key}", "added" if a is None else "removed",
                            "the sweep being resumed has a different space; resume with the spec as it was started")
        what = next(k for k in ("type", "arms", "values", "low", "high", "step") if a.get(k) != b.get(k))
        if what == "arms":
            was, now = list(a.get("arms") or {}), list(b.get("arms") or {})
            changed = [label for label in now if label not in was or a["arms"][label] != b["arms"][label]]
            detail = (f"arm {short_repr(changed[0])} is not the arm of that name in the sweep being resumed"
                      if changed else f"arms {short_repr([x for x in was if x not in now])} are missing")
        else:
            detail = f"{what} is {short_repr(b.get(what))}, was {short_repr(a.get(what))}"
        raise SpecError.at(f"--resume space.{key}", f"{detail}; resume with the spec as it was started, "
                                                    "or start a new sweep")
