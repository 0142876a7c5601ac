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
picks the newest such folder of this sweep name and calls ``Tuner.restore`` on it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from ..tracking import ROLE_SWEEP, TAG_ROLE, TAG_STATUS, TAG_STORAGE, TAG_SWEEP, TAG_SWEEP_ID
from ..config import flatten
from .spec import SpecError, SweepSpec
from .summary import summarise
from .ddp import trial_trainable
from .trainable import TrialContext

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
                            study_name=spec.name)
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
        return ASHAScheduler(time_attr="epoch", max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    return FIFOScheduler()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _reporter(spec: SweepSpec):
    from ray.tune import CLIReporter

    params = {p.key: p.key.rsplit(".", 1)[-1] if not p.is_arm else p.key for p in spec.params}
    if spec.search.algorithm == "grid":
        params["seed"] = "seed"
    metrics = {"epoch": "epoch", spec.metric: spec.metric}
    for m in ("val_top1", "val_loss", "train_loss"):
        metrics.setdefault(m, m)
    if spec.search.algorithm != "grid":
        metrics["seed"] = "seed"
    return CLIReporter(parameter_columns=params, metric_columns=metrics, max_report_frequency=15,
                       sort_by_metric=True, max_progress_rows=30,
                       max_column_length=28)


# --------------------------------------------------------------------------- running


def _init_ray(spec: SweepSpec, address: Optional[str], out: TextIO) -> None:
    import ray

    runtime_env = {"env_vars": dict(_WORKER_ENV)}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        num_cpus = spec.num_cpus or os.cpu_count() or 1
        # address="local": always a fresh instance of our own, never a cluster someone else started here.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=256 * 1024**2, runtime_env=runtime_env, log_to_driver=True)
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


def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, resume: bool = False,
              out: TextIO = sys.stdout) -> int:
    """Run (or ``resume``) the sweep; print progress and the best trial.  Returns an exit status."""
    for k, v in _WORKER_ENV.items():
        os.environ.setdefault(k, v)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Ray's CLIReporter table with our metric columns

    from ..tracking import MlflowRun, is_remote_tracking_uri, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    storage = resolve_storage(spec.storage_path)
    if address:
        if not is_remote_tracking_uri(tracking_uri):
            print(f"echos: warning: mlflow.tracking_uri {tracking_uri} is not a server; on a cluster every node "
                  "must reach it (run `mlflow server` and use http://HOST:PORT)", file=sys.stderr)
        if "://" not in storage:
            print(f"echos: warning: ray.storage_path {storage} is a local folder; on a cluster it must be shared "
                  "by every node (NFS) or be a bucket URI (s3://...)", file=sys.stderr)

    # ---- which sweep: new, or the newest of this name to resume
    if resume:
        ids = find_sweep_dirs(storage, spec.name)
        if not ids:
            raise SpecError("--resume", spec.name, f"no earlier sweep of this name under {storage}")
        sweep_id = ids[-1]
        saved = _read_json(storage, f"{sweep_id}/{SWEEP_FILE}") or {}
        _check_same_spec(spec, saved, tracking_uri)
        parent_run_id = saved.get("parent_run_id")
    else:
        sweep_id = f"{spec.name}-{time.strftime(_TS_FORMAT)}"
        while find_sweep_dirs(storage, spec.name)[-1:] == [sweep_id]:
            time.sleep(1.0)
            sweep_id = f"{spec.name}-{time.strftime(_TS_FORMAT)}"
        parent_run_id = None
    exp_path = f"{storage}/{sweep_id}"

    _init_ray(spec, address, out)
    import ray
    from ray import tune

    from .status import MlflowTrialStatus

    try:
        _check_fits(spec, address)
        # ---- the sweep's parent run in MLflow (the driver creates the experiment and the store)
        parent = MlflowRun(tracking_uri, spec.experiment, sweep_id, _parent_params(spec),
                           {TAG_SWEEP: spec.name, TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_SWEEP,
                            TAG_STATUS: "running", TAG_STORAGE: exp_path},
                           run_id=parent_run_id)
        if not resume:
            _write_json(storage, f"{sweep_id}/{SWEEP_FILE}", {
                "sweep_id": sweep_id, "name": spec.name, "parent_run_id": parent.run_id,
                "tracking_uri": tracking_uri, "experiment": spec.experiment, "spec": spec.summary_dict(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")})
            if spec.source:
                parent.log_artifact(spec.source)
        print(f"{'resuming' if resume else 'starting'} sweep {sweep_id}: {spec.n_trials} trials -> {exp_path}",
              file=out, flush=True)
        ctx = TrialContext(spec=spec, sweep_id=sweep_id, tracking_uri=tracking_uri, parent_run_id=parent.run_id,
                           storage=exp_path)
        trainable = trial_trainable(spec, ctx)  # one process per trial, or Ray Train's workers (.ddp)
        if resume:
            if not tune.Tuner.can_restore(exp_path):
                raise SpecError("--resume", sweep_id, f"{exp_path} holds no Ray Tune state to restore (the sweep "
                                                      "stopped before its first trial); start it again without --resume")
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
                    callbacks=[callback], progress_reporter=_reporter(spec), verbose=1),
            )
        t0 = time.time()
        results = tuner.fit()
        wall = time.time() - t0
        summary = summarise(spec, results, wall, tracking_uri, sweep_id, parent.run_id, out)
        parent.set_tags({TAG_STATUS: "finished", **summary})
        parent.end("FINISHED")
    finally:
        ray.shutdown()
    return 0


def _check_same_spec(spec: SweepSpec, saved: dict, tracking_uri: str) -> None:
    old = flatten(saved.get("spec") or {})
    new = flatten(json.loads(json.dumps(spec.summary_dict(), default=str)))
    for key in ("num_cpus", "max_concurrent", "description"):  # how it runs here, not what it runs
        old.pop(key, None)
        new.pop(key, None)
    for d in (old, new):  # how it is analysed (the analysis: section), not what it runs
        for key in [k for k in d if k == "analysis" or k.startswith("analysis.")]:
            d.pop(key)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise SpecError(f"--resume {key}", new.get(key),
                            f"differs from the sweep being resumed ({old.get(key)!r}); resume with the spec "
                            "as it was started, or start a new sweep")
    if saved.get("tracking_uri") and saved["tracking_uri"] != tracking_uri:
        raise SpecError("--resume mlflow.tracking_uri", tracking_uri,
                        f"differs from the sweep being resumed ({saved['tracking_uri']})")


